package cmd

import (
	"errors"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.podman.io/image/v5/types"

	"github.com/herd-project/herd/pull"
)

// Fuzz tests of herd's own parsing of what users type: the image list
// (--file) and the flag values herd interprets itself. As plain tests
// (make test) they run their seed corpus; `make fuzz` runs each for a
// while with generated input.

// pullFlags returns a pull command's options and flag set, for setting flags
// as the command line would.
func pullFlags() (*pullOptions, *pflag.FlagSet) {
	o := &pullOptions{}
	c := &cobra.Command{Use: "pull"}
	o.flags(c)
	return o, c.Flags()
}

func isUsageError(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

func FuzzParseImageList(f *testing.F) {
	for _, s := range []string{
		"", "\n", "docker.io/library/alpine:3.20\n", "a\nb # comment\n\n# only a comment\n  c  \n",
		"a b\n", "a\r\nb\r\n", "#\n#x y z\n", "a#b c", "\x00\n\xff", strings.Repeat("x", 70000),
		"localhost:5000/ns/img@sha256:" + strings.Repeat("a", 64) + "\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		images, err := parseImageList(strings.NewReader(list))
		if err != nil {
			return // a line with two words, or one too long for the scanner: reported, never guessed
		}
		if n := strings.Count(list, "\n") + 1; len(images) > n {
			t.Fatalf("%d images from %d lines", len(images), n)
		}
		for _, img := range images {
			if img == "" || strings.ContainsAny(img, "# \t\n\r\v\f") {
				t.Fatalf("image %q still has a comment, whitespace or nothing in it", img)
			}
		}
		// What it parsed, written one per line, parses back the same.
		again, err := parseImageList(strings.NewReader(strings.Join(images, "\n")))
		if err != nil || strings.Join(again, "\n") != strings.Join(images, "\n") {
			t.Fatalf("reparsing %q gave %q, %v", images, again, err)
		}
	})
}

func FuzzPlatformFlag(f *testing.F) {
	for _, s := range []string{"linux/amd64", "linux/arm64/v8", "linux", "linux/", "/amd64", "a/b/c/d", "", "//", "linux//v8", "windows/amd64/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		o, fs := pullFlags()
		if err := fs.Set("platform", value); err != nil {
			t.Fatalf("--platform %q: the flag itself refused it: %v", value, err)
		}
		var sys types.SystemContext
		err := o.platform.systemContext(&sys)
		if err != nil {
			if !isUsageError(err) {
				t.Fatalf("--platform %q: %v is not a usage error", value, err)
			}
			return
		}
		if value == "" {
			return // not given: the host's platform
		}
		if sys.OSChoice == "" || sys.ArchitectureChoice == "" || strings.Contains(sys.OSChoice+sys.ArchitectureChoice+sys.VariantChoice, "/") {
			t.Fatalf("--platform %q gave os %q arch %q variant %q", value, sys.OSChoice, sys.ArchitectureChoice, sys.VariantChoice)
		}
		back := sys.OSChoice + "/" + sys.ArchitectureChoice
		if sys.VariantChoice != "" || strings.Count(value, "/") == 2 {
			back += "/" + sys.VariantChoice
		}
		if back != value {
			t.Fatalf("--platform %q read as %q", value, back)
		}
	})
}

func FuzzPullOptionFlag(f *testing.F) {
	for _, s := range []string{"enable_partial_images=false", "k=v=w", "=v", "k=", "novalue", "", "use_hard_links=true"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, kv string) {
		o, fs := pullFlags()
		if err := fs.Set("pull-option", kv); err != nil {
			t.Fatalf("--pull-option %q: the flag itself refused it: %v", kv, err)
		}
		opts, err := o.storage.storeOptions(fs)
		key, value, ok := strings.Cut(kv, "=")
		if err != nil {
			if !isUsageError(err) && !strings.HasPrefix(err.Error(), "reading storage configuration") {
				t.Fatalf("--pull-option %q: %v is not a usage error", kv, err)
			}
			if ok && key != "" && isUsageError(err) {
				t.Fatalf("--pull-option %q refused although it is KEY=VALUE: %v", kv, err)
			}
			return
		}
		if !ok || key == "" {
			t.Fatalf("--pull-option %q accepted without a KEY=VALUE", kv)
		}
		if got := opts.PullOptions[key]; got != value {
			t.Fatalf("--pull-option %q set %s to %q", kv, key, got)
		}
	})
}

func FuzzCredsFlag(f *testing.F) {
	for _, s := range []string{"user:pass", "user:", ":pass", "user", "user:pa:ss", "", "ü:🔑"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, creds string) {
		o, fs := pullFlags()
		if err := fs.Set("creds", creds); err != nil {
			t.Fatalf("--creds %q: the flag itself refused it: %v", creds, err)
		}
		var sys types.SystemContext
		err := o.registry.systemContext(fs, &sys)
		if err != nil {
			if !isUsageError(err) {
				t.Fatalf("--creds %q: %v is not a usage error", creds, err)
			}
			if _, pass, _ := strings.Cut(creds, ":"); len(pass) > 8 && strings.Contains(err.Error(), pass) {
				t.Fatalf("--creds: the error repeats the password: %v", err)
			}
			return
		}
		a := sys.DockerAuthConfig
		if a == nil || a.Username == "" || a.Username+":"+a.Password != creds {
			t.Fatalf("--creds %q read as %+v", creds, a)
		}
	})
}

func FuzzRetryFlags(f *testing.F) {
	f.Add("3", "", "60s")
	f.Add("0", "1s", "1ms")
	f.Add("-1", "-1s", "0")
	f.Add("99999999999999999999", "1h2m", "x")
	f.Fuzz(func(t *testing.T, retries, delay, stall string) {
		o, fs := pullFlags()
		for name, v := range map[string]string{"retry": retries, "retry-delay": delay, "stall-timeout": stall} {
			if v == "" {
				continue
			}
			if err := fs.Set(name, v); err != nil {
				return // pflag refuses it as cobra would: a usage error
			}
		}
		var opts pull.Options
		if err := o.retry.apply(&opts); err != nil {
			if !isUsageError(err) {
				t.Fatalf("%v is not a usage error", err)
			}
			return
		}
		if opts.Retries < 0 || opts.RetryDelay < 0 || opts.StallTimeout <= 0 {
			t.Fatalf("--retry %q --retry-delay %q --stall-timeout %q accepted as %d, %s, %s", retries, delay, stall, opts.Retries, opts.RetryDelay, opts.StallTimeout)
		}
		if stall == "" && opts.StallTimeout != pull.DefaultStallTimeout || retries == "" && opts.Retries != pull.DefaultRetries {
			t.Fatalf("defaults not kept: %+v", opts)
		}
	})
}
