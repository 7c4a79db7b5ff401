// Package testregistry runs a real CNCF distribution registry (in-memory
// storage) on 127.0.0.1 for tests, demos and benchmarks. It counts the blob
// bytes it serves, can throttle them to simulate a slow link, and lets tests
// inject faults into blob GETs. With Options.ProxyFor it runs as a
// pull-through cache of another registry.
//
// It deliberately does not depend on package testing (see StartT for that),
// so non-test programs can use it too.
package testregistry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // registers the "filesystem" storage driver
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"   // registers the "inmemory" storage driver
	digest "github.com/opencontainers/go-digest"
)

// Options configures Start.
type Options struct {
	// BandwidthLimit caps the blob body bytes served per second, shared by
	// all connections through one token bucket, so fetched bytes cost time
	// as on a real link. 0 means unlimited. Manifests are not throttled.
	BandwidthLimit int64
	// Quiet silences the registry's log output. The registry logs through
	// the global logrus logger, so this filters registry entries out of that
	// global logger while any quiet registry is running; other logrus users
	// (containers/image) are unaffected. StartT sets it by default.
	Quiet bool
	// Users, if set, makes the registry require HTTP basic auth for every
	// request (name → password), through distribution's htpasswd auth.
	Users map[string]string
	// TLS serves HTTPS with a certificate from the registry's own test CA
	// (Registry.Certs) instead of plain HTTP.
	TLS bool
	// RootDirectory, if set, keeps the registry's content in that directory
	// (distribution's filesystem driver) instead of in memory, so a later
	// registry started on the same directory serves the same images without
	// pushing them again (the benchmark caches its image sets this way).
	RootDirectory string
	// ProxyFor, if set, is the URL of another registry (an origin, e.g.
	// another Registry's URL) and makes this one a pull-through cache of it:
	// distribution's proxy mode (proxy.remoteurl). It serves what it has
	// cached and fetches the rest from the origin, storing blobs as it
	// serves them; it cannot be pushed to. distribution asks the origin
	// for a tag's digest (a HEAD) on every manifest request by tag, and
	// serves manifests and blobs from its cache once it has them (it
	// fetches a manifest it lacks by the tag it was asked for). It caches
	// blobs per repository: a blob it holds for one repository is fetched
	// from the origin again when asked for through another. It reaches
	// the origin through http.DefaultTransport without credentials, so the
	// origin must be plain HTTP without Users. Cached content never
	// expires (proxy.ttl 0, so no expiry scheduler runs). The counters
	// count what this registry serves, as for any other.
	ProxyFor string
}

// BlobHook is called for every blob GET before the registry serves it. If it
// returns true it has handled the request itself (written an error, served a
// truncated body, waited on a gate, ...). Bytes it writes with a 200/206
// status are counted and throttled like the registry's own.
type BlobHook func(w http.ResponseWriter, req *http.Request, d digest.Digest) (handled bool)

// Registry is a running test registry.
type Registry struct {
	Host string // "127.0.0.1:PORT", for image references
	URL  string // "http://127.0.0.1:PORT" ("https://..." with Options.TLS)
	// Certs is the test CA and a client certificate, with Options.TLS.
	Certs *Certs

	requireClientCert atomic.Bool
	cleanup           []func()

	server  *httptest.Server
	cancel  context.CancelFunc
	limiter *limiter // nil when unlimited
	quiet   bool
	hook    atomic.Pointer[BlobHook]
	// manifestHook, if set, sees every manifest GET first (SetManifestHook).
	manifestHook atomic.Pointer[func(w http.ResponseWriter, req *http.Request) bool]

	mu    sync.Mutex
	bytes map[digest.Digest]int64
	gets  map[digest.Digest]int
	// manifestGets counts GET requests per manifest path: "REPO/manifests/REF";
	// manifestHeads the HEAD requests.
	manifestGets  map[string]int
	manifestHeads map[string]int
	total         int64
}

// Start starts a registry with in-memory storage (or Options.RootDirectory) on a random 127.0.0.1 port
// (plain HTTP). ctx only supplies values: cancelling it does not stop the
// registry, Close does.
func Start(ctx context.Context, opts Options) (r *Registry, err error) {
	if opts.BandwidthLimit < 0 {
		return nil, fmt.Errorf("testregistry: negative bandwidth limit %d", opts.BandwidthLimit)
	}
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("testregistry: generating HTTP secret: %w", err)
	}
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{
		"inmemory": configuration.Parameters{},
		// The purger only matters for long-lived registries; it would also
		// log at startup.
		"maintenance": configuration.Parameters{
			"uploadpurging": map[any]any{"enabled": false},
		},
	}
	if opts.RootDirectory != "" {
		delete(cfg.Storage, "inmemory")
		cfg.Storage["filesystem"] = configuration.Parameters{"rootdirectory": opts.RootDirectory}
	}
	// Without a secret the registry warns and generates one.
	cfg.HTTP.Secret = hex.EncodeToString(secret)
	if opts.ProxyFor != "" {
		never := time.Duration(0)
		cfg.Proxy = configuration.Proxy{RemoteURL: opts.ProxyFor, TTL: &never}
	}
	var cleanup []func()
	if len(opts.Users) > 0 {
		done, aerr := configureAuth(cfg, opts.Users)
		if aerr != nil {
			return nil, aerr
		}
		cleanup = append(cleanup, done)
		defer func() {
			if err != nil {
				done()
			}
		}()
	}

	if opts.Quiet {
		quietRegistryLogs()
		defer func() {
			if err != nil {
				unquietRegistryLogs()
			}
		}()
	}

	appCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	app, err := newApp(appCtx, cfg)
	if err != nil {
		cancel()
		return nil, err
	}

	r = &Registry{
		cancel:        cancel,
		quiet:         opts.Quiet,
		bytes:         map[digest.Digest]int64{},
		gets:          map[digest.Digest]int{},
		manifestGets:  map[string]int{},
		manifestHeads: map[string]int{},

		cleanup: cleanup,
	}
	if opts.BandwidthLimit > 0 {
		r.limiter = newLimiter(opts.BandwidthLimit)
	}
	// Unstarted, so that TLS could be configured before StartTLS if needed.
	r.server = httptest.NewUnstartedServer(r.middleware(app))
	if opts.TLS {
		if err := r.startTLS(); err != nil {
			cancel()
			return nil, err
		}
	} else {
		r.server.Start()
	}
	r.URL = r.server.URL
	r.Host = r.server.Listener.Addr().String()
	return r, nil
}

// newApp turns NewApp's panics on bad configuration into errors.
func newApp(ctx context.Context, cfg *configuration.Configuration) (app *handlers.App, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("testregistry: creating registry app: %v", p)
		}
	}()
	return handlers.NewApp(ctx, cfg), nil
}

// Close stops the server (closing client connections) and the registry app.
func (r *Registry) Close() {
	r.server.CloseClientConnections()
	r.server.Close()
	r.cancel()
	for _, f := range r.cleanup {
		f()
	}
	r.cleanup = nil
	if r.quiet {
		unquietRegistryLogs()
		r.quiet = false
	}
}

// SetBlobHook installs h (nil removes it). Safe to call while serving.
func (r *Registry) SetBlobHook(h func(w http.ResponseWriter, req *http.Request, d digest.Digest) (handled bool)) {
	if h == nil {
		r.hook.Store(nil)
		return
	}
	bh := BlobHook(h)
	r.hook.Store(&bh)
}

// BlobBytes returns the body bytes served for GETs of blob d.
func (r *Registry) BlobBytes(d digest.Digest) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bytes[d]
}

// BlobGets returns the number of GET requests for blob d (any range,
// including those a hook handled or that failed).
func (r *Registry) BlobGets(d digest.Digest) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gets[d]
}

// SetManifestHook installs h (nil removes it): it sees every manifest GET
// first and answers it itself by returning true. Safe to call while serving.
func (r *Registry) SetManifestHook(h func(w http.ResponseWriter, req *http.Request) (handled bool)) {
	if h == nil {
		r.manifestHook.Store(nil)
		return
	}
	r.manifestHook.Store(&h)
}

// ManifestGets returns the number of GET requests (not HEAD) for the
// manifest of repo (without the host) by ref, a tag or a digest.
func (r *Registry) ManifestGets(repo, ref string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.manifestGets[repo+"/manifests/"+ref]
}

// ManifestHeads returns the number of HEAD requests for the manifest of
// repo (without the host) by ref, a tag or a digest.
func (r *Registry) ManifestHeads(repo, ref string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.manifestHeads[repo+"/manifests/"+ref]
}

// TotalBlobBytes returns the body bytes served for all blob GETs.
func (r *Registry) TotalBlobBytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// Served returns a copy of the per-blob byte counts.
func (r *Registry) Served() map[digest.Digest]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.bytes)
}

// ResetCounters zeroes all counters, e.g. after pushing fixtures.
func (r *Registry) ResetCounters() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bytes = map[digest.Digest]int64{}
	r.gets = map[digest.Digest]int{}
	r.manifestGets = map[string]int{}
	r.manifestHeads = map[string]int{}
	r.total = 0
}

// blobPath matches /v2/<name>/blobs/<digest>; upload URLs
// (/blobs/uploads/...) do not match because they contain no digest.
var manifestPath = regexp.MustCompile(`^/v2/(.+)/manifests/([^/]+)$`)

var blobPath = regexp.MustCompile(`^/v2/(.+)/blobs/([A-Za-z0-9_+.-]+:[A-Za-z0-9=_-]+)$`)

// middleware counts, throttles and hooks blob GETs and counts manifest
// GETs and HEADs; everything else goes straight to the registry.
func (r *Registry) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodHead {
			if m := manifestPath.FindStringSubmatch(req.URL.Path); m != nil {
				r.mu.Lock()
				r.manifestHeads[m[1]+"/manifests/"+m[2]]++
				r.mu.Unlock()
			}
		}
		if req.Method != http.MethodGet {
			next.ServeHTTP(w, req)
			return
		}
		if m := manifestPath.FindStringSubmatch(req.URL.Path); m != nil {
			r.mu.Lock()
			r.manifestGets[m[1]+"/manifests/"+m[2]]++
			r.mu.Unlock()
			if h := r.manifestHook.Load(); h != nil && (*h)(w, req) {
				return
			}
		}
		m := blobPath.FindStringSubmatch(req.URL.Path)
		if m == nil {
			next.ServeHTTP(w, req)
			return
		}
		d, err := digest.Parse(m[2])
		if err != nil {
			next.ServeHTTP(w, req)
			return
		}
		r.mu.Lock()
		r.gets[d]++
		r.mu.Unlock()

		cw := &countingWriter{ResponseWriter: w, reg: r, digest: d, ctx: req.Context()}
		if h := r.hook.Load(); h != nil && (*h)(cw, req, d) {
			return
		}
		next.ServeHTTP(cw, req)
	})
}

func (r *Registry) count(d digest.Digest, n int) {
	r.mu.Lock()
	r.bytes[d] += int64(n)
	r.total += int64(n)
	r.mu.Unlock()
}

// countingWriter counts (and throttles) body bytes of successful blob
// responses. It stays a plain pass-through wrapper so http.ServeContent's
// single and multipart range responses work unchanged; error bodies (JSON
// errors, 416) are neither counted nor throttled.
type countingWriter struct {
	http.ResponseWriter
	reg     *Registry
	digest  digest.Digest
	ctx     context.Context
	status  int
	counted bool
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
		w.counted = code == http.StatusOK || code == http.StatusPartialContent
	}
	w.ResponseWriter.WriteHeader(code)
}

// writeChunk bounds how many bytes one limiter reservation covers, so
// concurrent connections interleave fairly.
const writeChunk = 32 << 10

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.counted {
		return w.ResponseWriter.Write(p)
	}
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), writeChunk)]
		if l := w.reg.limiter; l != nil {
			if err := l.wait(w.ctx, len(chunk)); err != nil {
				return written, err
			}
		}
		// Count before writing: once the bytes reach the socket the client
		// may finish and read the counters before this goroutine resumes.
		// A short write takes back what did not go out.
		w.reg.count(w.digest, len(chunk))
		n, err := w.ResponseWriter.Write(chunk)
		written += n
		if n < len(chunk) {
			w.reg.count(w.digest, n-len(chunk))
		}
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// Flush passes through so streaming handlers keep working.
func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
