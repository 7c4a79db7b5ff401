package testregistry

import (
	"sync"

	"github.com/sirupsen/logrus"
)

// The registry has no per-instance logger: it logs through a package-level
// entry derived from logrus.StandardLogger() with a "go.version" field (its
// internal dcontext package; only registry.NewRegistry can replace it, and
// that also rewrites global logrus settings). So quiet mode wraps the global
// formatter to drop entries carrying that field, leaving other logrus users
// such as containers/image untouched. It is reference-counted across quiet
// registries and restored when the last one closes.

var (
	quietMu    sync.Mutex
	quietUsers int
	savedFmt   logrus.Formatter
)

// registryLogField marks every entry logged by the distribution registry.
const registryLogField = "go.version"

type dropRegistryEntries struct{ next logrus.Formatter }

func (f dropRegistryEntries) Format(e *logrus.Entry) ([]byte, error) {
	if _, ok := e.Data[registryLogField]; ok {
		return nil, nil // logrus writes the empty result: nothing appears
	}
	return f.next.Format(e)
}

func quietRegistryLogs() {
	quietMu.Lock()
	defer quietMu.Unlock()
	quietUsers++
	if quietUsers == 1 {
		std := logrus.StandardLogger()
		savedFmt = std.Formatter
		std.SetFormatter(dropRegistryEntries{next: savedFmt})
	}
}

func unquietRegistryLogs() {
	quietMu.Lock()
	defer quietMu.Unlock()
	quietUsers--
	if quietUsers == 0 {
		std := logrus.StandardLogger()
		// Only restore if nobody replaced the formatter meanwhile.
		if _, ok := std.Formatter.(dropRegistryEntries); ok {
			std.SetFormatter(savedFmt)
		}
		savedFmt = nil
	}
}
