package cmd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
	"go.podman.io/common/pkg/config"
	"go.podman.io/storage/pkg/configfile"
	"go.podman.io/storage/pkg/unshare"
)

// engineConf is what herd takes from containers.conf's [engine] table: the
// defaults podman pull takes from it (containers/common's libimage), read
// by containers/common's own pkg/config, so that the files, their order and
// the environment variables are podman's: the user's
// (~/.config/containers/containers.conf, $XDG_CONFIG_HOME's), else
// /etc/containers', else /usr/share/containers' (the first that exists),
// then the containers.conf.d drop-ins of each; CONTAINERS_CONF replaces all
// of those; CONTAINERS_CONF_OVERRIDE is read last. A flag given on the
// command line always wins.
type engineConf struct {
	jobs       uint          // image_parallel_copies; 0: herd's own default
	retries    uint          // retry (pkg/config's default is podman's, 3)
	retryDelay time.Duration // retry_delay; 0: exponential backoff from 1s
	// tmpDir is the base of big temporary files, ImageCopyTmpDir's answer:
	// $TMPDIR if set (it wins, as in podman), else image_copy_tmp_dir
	// (default /var/tmp); "" means herd's default (TempDir).
	tmpDir string
	// tmpInStore is image_copy_tmp_dir = "storage" (and no $TMPDIR): the
	// store's own tmp directory, GRAPHROOT/tmp.
	tmpInStore bool
}

// readEngineConf reads containers.conf, once per run. Errors name the file
// (pkg/config names the one it could not read or decode; herd's own checks
// of a value list the files that were read).
func readEngineConf() (engineConf, error) {
	// config.New rather than config.Default: Default caches the first
	// answer for the life of the process, and tests run herd many times in
	// one process.
	cfg, err := config.New(nil)
	if err != nil {
		return engineConf{}, err // "parsing containers.conf: decode configuration \"FILE\": ..."
	}
	e := cfg.Engine
	conf := engineConf{jobs: e.ImageParallelCopies, retries: e.Retry}
	if e.RetryDelay != "" {
		// As libimage's pull: a Go duration.
		d, err := time.ParseDuration(e.RetryDelay)
		if err != nil {
			return conf, containersConfErrorf("retry_delay %q: %v", e.RetryDelay, err)
		}
		if d < 0 {
			return conf, containersConfErrorf("retry_delay %q: must not be negative", e.RetryDelay)
		}
		conf.retryDelay = d
	}
	conf.tmpDir, err = cfg.ImageCopyTmpDir()
	if err != nil { // a relative path
		return conf, containersConfErrorf("%v", err)
	}
	if _, tmpdirSet := os.LookupEnv("TMPDIR"); !tmpdirSet && e.ImageCopyTmpDir == "storage" {
		conf.tmpInStore = true
	}
	return conf, nil
}

// containersConf reads containers.conf and makes its settings the values of
// the flags the command line did not give; it returns what the run needs
// later (the temporary directory's base, once the store is open).
func (o *pullOptions) containersConf(fs *pflag.FlagSet) (engineConf, error) {
	conf, err := readEngineConf()
	if err != nil {
		return conf, err
	}
	if conf.jobs > 0 && !fs.Changed("jobs") {
		o.jobs = int(conf.jobs)
	}
	if !fs.Changed("retry") {
		o.retry.retries = conf.retries
	}
	if conf.retryDelay > 0 && !fs.Changed("retry-delay") {
		o.retry.delay = conf.retryDelay
	}
	logrus.Debugf("--jobs %d, --retry %d, --retry-delay %s (the flags given, else containers.conf's image_parallel_copies %d, retry %d, retry_delay %s); temporary files base: %q, in the store: %v",
		o.jobs, o.retry.retries, o.retry.delay, conf.jobs, conf.retries, conf.retryDelay, conf.tmpDir, conf.tmpInStore)
	return conf, nil
}

// tempBase is the directory in which the run makes its own directory for big
// temporary files (tmpdir.go), given the graph root of the store it opened.
//
// image_copy_tmp_dir = "storage" means the tmp directory of the store herd
// pulls into (--root included), which herd creates: staging blobs on the
// store's filesystem is what the setting is for. (pkg/config's
// ImageCopyTmpDir would answer storage.conf's graph root, which podman uses
// even with --root; for a store chosen by storage.conf they are the same.)
// Should it fail to create it, runTempDir reports the cause.
func (c engineConf) tempBase(graphRoot string) string {
	switch {
	case c.tmpInStore:
		dir := filepath.Join(graphRoot, "tmp")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			logrus.Debugf("creating %s (image_copy_tmp_dir = \"storage\"): %v", dir, err)
		}
		return dir
	case c.tmpDir != "":
		return c.tmpDir
	default: // TMPDIR="" or image_copy_tmp_dir = ""
		return TempDir()
	}
}

// containersConfErrorf is an error in a containers.conf setting, naming the
// files read: pkg/config merges them and does not say which one set it.
func containersConfErrorf(format string, args ...any) error {
	var files []string
	for item, err := range configfile.Read(&configfile.File{
		Name: "containers", Extension: "conf", EnvironmentName: "CONTAINERS_CONF",
		UserId: unshare.GetRootlessUID(),
	}) {
		if err != nil {
			break
		}
		files = append(files, item.Name)
	}
	return fmt.Errorf("containers.conf (%s): [engine] %s", strings.Join(files, ", "), fmt.Sprintf(format, args...))
}
