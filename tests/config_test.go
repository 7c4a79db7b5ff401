package tests

// Issue 5: herd reads the containers tools' configuration (registries.conf,
// auth files, certs.d, policy.json) and takes podman's flags for them.

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 5, test 1: the image exists only on the mirror; herd pulls it by
// the primary's name through the [[registry.mirror]] of registries.conf.
// The mirror serves the bytes, the primary none, and the image is named as
// the primary's. With pull-from-mirror = "digest-only" the mirror serves
// only pulls by digest.
func TestPullThroughMirror(t *testing.T) {
	e := newEnv(t, testregistry.Options{}) // e.reg is the primary, and stays empty
	mirror := testregistry.StartT(t, testregistry.Options{})
	pushDir := filepath.Join(e.dir, "mirror-push")
	if err := os.Mkdir(pushDir, 0o755); err != nil {
		t.Fatal(err)
	}
	onMirror, err := testimage.NewPusher(mirror.Host, pushDir).Push(t.Context(), "team/app:1",
		testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(501)}}, "gzip")
	if err != nil {
		t.Fatal(err)
	}
	mirror.ResetCounters()
	asPrimary := onMirror
	asPrimary.Ref = e.reg.Host + "/team/app:1"

	// No --tls-verify=false: the registries' "insecure" lets herd use plain HTTP.
	e.omit = map[string]bool{"--tls-verify": true}
	write(t, e.regconf, mirrorConf(e.reg.Host, mirror.Host))
	s, r := e.summary(asPrimary.Ref)
	wantSuccess(t, r, "pull through the mirror")
	e.verifyImage(asPrimary)
	if len(s.Images) != 1 || s.Images[0].Reference != asPrimary.Ref {
		t.Errorf("summary images %+v, want one with reference %s", s.Images, asPrimary.Ref)
	}
	for _, l := range onMirror.Layers {
		if n := mirror.BlobBytes(l.Digest); n != l.Size {
			t.Errorf("the mirror served %d bytes of layer %s, want its size %d", n, l.Digest, l.Size)
		}
	}
	if n := e.reg.TotalBlobBytes(); n != 0 {
		t.Errorf("the primary served %d blob bytes, want 0", n)
	}

	// digest-only: a tag is looked up on the primary alone, a digest on the mirror too.
	digestOnly := filepath.Join(e.dir, "digest-only.conf")
	write(t, digestOnly, mirrorConf(e.reg.Host, mirror.Host, `pull-from-mirror = "digest-only"`))
	e.resetStore()
	r = e.herd("--registries-conf", digestOnly, asPrimary.Ref)
	wantFailure(t, r, "a tag with a digest-only mirror", asPrimary.Ref)
	e.checkStoreEmpty("a tag with a digest-only mirror")

	byDigest := e.reg.Host + "/team/app@" + onMirror.ManifestDigest.String()
	r = e.herd("--registries-conf", digestOnly, byDigest)
	wantSuccess(t, r, "a digest with a digest-only mirror")
	img, err := e.store().Image(byDigest)
	if err != nil {
		t.Fatalf("%s is not in the store: %v", byDigest, err)
	}
	if img.ID != onMirror.ConfigDigest.Encoded() {
		t.Errorf("image ID %s, want the config digest %s", img.ID, onMirror.ConfigDigest.Encoded())
	}
}

// Issue 5, test 2: a registry with htpasswd auth. Without credentials herd
// says the registry wants some; with wrong ones that they were refused;
// --creds, --authfile, $REGISTRY_AUTH_FILE, podman's auth.json and docker's
// config.json all work; the password never appears in herd's output, even
// at the trace log level (where containers/image logs its requests).
func TestRegistryAuth(t *testing.T) {
	const user, pass = "herd-user", "Pa55-herd-secret-9c41e"
	e := newEnv(t, testregistry.Options{Users: map[string]string{user: pass}})
	host := e.reg.Host
	authJSON := func(path, u, p string) string {
		write(t, path, fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, host, base64.StdEncoding.EncodeToString([]byte(u+":"+p))))
		return path
	}
	// Only the files this test writes: no root's ~/.docker/config.json,
	// no /run/containers/0/auth.json.
	home := filepath.Join(e.dir, "home")
	t.Setenv("HOME", home)
	// The fixture pusher (containers/image) logs in from podman's auth.json;
	// herd gets an empty runtime directory afterwards.
	runtimeDir := filepath.Join(e.dir, "run-user")
	authJSON(filepath.Join(runtimeDir, "containers", "auth.json"), user, pass)
	t.Setenv("XDG_RUNTIME_DIR", runtimeDir)
	img := e.push("private/app:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(511)}}, "gzip")
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(e.dir, "run-empty"))
	if err := os.MkdirAll(filepath.Join(e.dir, "run-empty"), 0o700); err != nil {
		t.Fatal(err)
	}

	secrets := []string{pass, base64.StdEncoding.EncodeToString([]byte(user + ":" + pass)), "wrong-" + pass}
	noSecrets := func(what string, r run) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(r.stdout, s) || strings.Contains(r.stderr, s) {
				t.Errorf("%s: herd's output contains a password (%q)", what, s)
			}
		}
	}
	pulled := func(what string, r run) {
		t.Helper()
		wantSuccess(t, r, what)
		noSecrets(what, r)
		e.verifyImage(img)
		if e.reg.Served()[img.Layers[1].Digest] == 0 {
			t.Errorf("%s: the registry served no bytes of the top layer", what)
		}
		if !strings.Contains(r.stderr, "GET ") {
			t.Errorf("%s: no containers/image request logged at --log-level=trace; the password check saw nothing:\n%s", what, r.stderr)
		}
		e.resetStore()
		e.reg.ResetCounters()
	}

	r := e.herd("--log-level=trace", img.Ref)
	wantFailure(t, r, "no credentials", img.Ref, "registry "+host+" requires credentials and herd has none", "--creds")
	e.checkStoreEmpty("no credentials")

	r = e.herd("--log-level=trace", "--creds", user+":wrong-"+pass, img.Ref)
	wantFailure(t, r, "wrong password", img.Ref, "registry "+host+" refused the credentials")
	noSecrets("wrong password", r)
	e.checkStoreEmpty("wrong password")

	pulled("--creds", e.herd("--log-level=trace", "--creds", user+":"+pass, "--format", "json", img.Ref))
	authFile := authJSON(filepath.Join(e.dir, "auth.json"), user, pass)
	pulled("--authfile", e.herd("--log-level=trace", "--authfile", authFile, img.Ref))
	t.Run("REGISTRY_AUTH_FILE", func(t *testing.T) {
		t.Setenv("REGISTRY_AUTH_FILE", authFile)
		pulled("$REGISTRY_AUTH_FILE", e.herd("--log-level=trace", img.Ref))
	})
	t.Run("podman auth.json", func(t *testing.T) {
		t.Setenv("XDG_RUNTIME_DIR", runtimeDir) // where podman login writes
		pulled("$XDG_RUNTIME_DIR/containers/auth.json", e.herd("--log-level=trace", img.Ref))
	})
	t.Run("docker config.json", func(t *testing.T) {
		authJSON(filepath.Join(home, ".docker", "config.json"), user, pass)
		defer os.RemoveAll(filepath.Join(home, ".docker"))
		pulled("~/.docker/config.json", e.herd("--log-level=trace", img.Ref))
	})

	if r := e.herd("--creds", ":"+pass, img.Ref); r.code != 2 {
		t.Errorf("--creds without a user name: exit %d, want 2 (usage)\n%s", r.code, r.stderr)
	} else {
		noSecrets("--creds without a user name", r)
	}

	missing := filepath.Join(e.dir, "no-such-auth.json")
	if r := e.herd("--authfile", missing, img.Ref); r.code != 2 || !strings.Contains(r.stderr, missing) {
		t.Errorf("--authfile naming a missing file: exit %d, want 2 with an error naming it:\n%s", r.code, r.stderr)
	}
}

// Issue 5, test 3: an HTTPS registry with its own CA. By default herd
// refuses it and says the certificate cannot be verified; --cert-dir with
// ca.crt and --tls-verify=false work; a registry that wants a client
// certificate gets client.cert and client.key from the same directory.
func TestRegistryTLS(t *testing.T) {
	e := newEnv(t, testregistry.Options{TLS: true})
	e.omit = map[string]bool{"--tls-verify": true}
	img := e.push("secure/app:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(521)}}, "zstd")
	caOnly := filepath.Join(e.dir, "certs-ca", e.reg.Host)
	withClient := filepath.Join(e.dir, "certs-client", e.reg.Host)
	if err := e.reg.Certs.WriteDir(caOnly, false); err != nil {
		t.Fatal(err)
	}
	if err := e.reg.Certs.WriteDir(withClient, true); err != nil {
		t.Fatal(err)
	}
	pulled := func(what string, r run) {
		t.Helper()
		wantSuccess(t, r, what)
		e.verifyImage(img)
		e.resetStore()
	}

	r := e.herd(img.Ref)
	wantFailure(t, r, "default verification", img.Ref, "certificate of registry "+e.reg.Host+" cannot be verified", "--cert-dir")
	e.checkStoreEmpty("default verification")
	pulled("--cert-dir with ca.crt", e.herd("--cert-dir", caOnly, img.Ref))
	pulled("--tls-verify=false", e.herd("--tls-verify=false", img.Ref))

	e.reg.RequireClientCert(true)
	defer e.reg.RequireClientCert(false)
	r = e.herd("--cert-dir", caOnly, img.Ref)
	wantFailure(t, r, "no client certificate", img.Ref, "registry "+e.reg.Host+" wants a client certificate", "client.cert")
	pulled("--cert-dir with client.cert and client.key", e.herd("--cert-dir", withClient, img.Ref))

	// A plain-HTTP registry, with TLS verification on (the default).
	plain := testregistry.StartT(t, testregistry.Options{})
	r = e.herd(plain.Host + "/any/image:1")
	wantFailure(t, r, "plain HTTP by default", "registry "+plain.Host+" answers plain HTTP", "insecure = true", "--tls-verify=false")
}

// Issue 5, test 4: the signature policy decides. reject stores nothing and
// says so; insecureAcceptAnything pulls; a policy scoped to the registry
// overrides the default; a missing policy file is an error, never an
// accept; without --signature-policy herd reads the usual locations
// ($CONTAINERS_POLICY_JSON here).
func TestSignaturePolicy(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	img := e.push("signed/app:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(531)}}, "gzip")
	policy := func(name, content string) string {
		p := filepath.Join(e.dir, name)
		write(t, p, content)
		return p
	}
	reject := policy("reject.json", `{"default": [{"type": "reject"}]}`)
	accept := policy("accept.json", `{"default": [{"type": "insecureAcceptAnything"}]}`)
	scoped := policy("scoped.json", fmt.Sprintf(`{"default": [{"type": "reject"}],
		"transports": {"docker": {%q: [{"type": "insecureAcceptAnything"}]}}}`, e.reg.Host+"/signed"))

	r := e.herd("--signature-policy", reject, img.Ref)
	wantFailure(t, r, "reject", img.Ref, "rejected")
	e.checkStoreEmpty("reject")
	if n := e.layerBytes(img); n != 0 {
		t.Errorf("reject: the registry served %d layer bytes, want 0", n)
	}

	for _, p := range []string{accept, scoped} {
		r = e.herd("--signature-policy", p, img.Ref)
		wantSuccess(t, r, p)
		e.verifyImage(img)
		e.resetStore()
	}

	missing := filepath.Join(e.dir, "no-such-policy.json")
	r = e.herd("--signature-policy", missing, img.Ref)
	wantStatus(t, r, "missing policy", 125, "no signature policy", missing) // herd could not start
	e.checkStoreEmpty("missing policy")

	e.omit = map[string]bool{"--signature-policy": true}
	r = e.herdExec([]string{"CONTAINERS_POLICY_JSON=" + reject}, "", img.Ref)
	wantFailure(t, r, "$CONTAINERS_POLICY_JSON rejecting", img.Ref, "rejected")
	e.checkStoreEmpty("$CONTAINERS_POLICY_JSON rejecting")
	r = e.herdExec([]string{"CONTAINERS_POLICY_JSON=" + accept}, "", img.Ref)
	wantSuccess(t, r, "$CONTAINERS_POLICY_JSON accepting")
	e.verifyImage(img)
}

// Issue 5, test 6: short names resolve through registries.conf as podman
// resolves them: aliases, unqualified-search registries (in order, when
// short-name-mode is permissive), a clear error when enforcing mode cannot
// ask which registry; a blocked registry is refused by name.
// CONTAINERS_REGISTRIES_CONF is read when --registries-conf is not given.
// Runs that may face an ambiguous short name run as separate processes, so
// that they are non-interactive even when the tests run on a terminal.
func TestShortNames(t *testing.T) {
	e := newEnv(t, testregistry.Options{}) // registry A: has none of the images
	b := testregistry.StartT(t, testregistry.Options{})
	pushDir := filepath.Join(e.dir, "b-push")
	if err := os.Mkdir(pushDir, 0o755); err != nil {
		t.Fatal(err)
	}
	pusher := testimage.NewPusher(b.Host, pushDir)
	push := func(repoTag string, seed int64) testimage.Pushed {
		p, err := pusher.Push(t.Context(), repoTag, testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(seed)}}, "gzip")
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	aliased := push("team/herd-aliased:1", 541)
	searched := push("herd-searched:1", 542)
	e.omit = map[string]bool{"--tls-verify": true}
	registries := fmt.Sprintf(`
[[registry]]
location = %[1]q
insecure = true

[[registry]]
location = %[2]q
insecure = true

[aliases]
"herd-aliased" = "%[2]s/team/herd-aliased"
`, e.reg.Host, b.Host)
	conf := func(name, head string) string {
		p := filepath.Join(e.dir, name)
		write(t, p, head+registries)
		return p
	}
	both := fmt.Sprintf(`unqualified-search-registries = [%q, %q]`, e.reg.Host, b.Host)
	permissive := conf("permissive.conf", both)
	enforcing := conf("enforcing.conf", both+"\nshort-name-mode = \"enforcing\"")
	onlyB := conf("only-b.conf", fmt.Sprintf(`unqualified-search-registries = [%q]
short-name-mode = "enforcing"`, b.Host))

	// An alias wins over search registries, in any mode.
	s, r := e.summary("--registries-conf", enforcing, "herd-aliased:1")
	wantSuccess(t, r, "alias")
	if len(s.Images) != 1 || s.Images[0].Reference != aliased.Ref {
		t.Errorf("alias: pulled %+v, want %s", s.Images, aliased.Ref)
	}
	e.verifyImage(aliased)

	// One search registry: no ambiguity, even when enforcing.
	r = e.herdExec(nil, "", "--registries-conf", onlyB, "herd-searched:1")
	wantSuccess(t, r, "one unqualified-search registry")
	e.verifyImage(searched)
	e.resetStore()

	// Permissive and not on a terminal: every candidate in order (A has no such image).
	r = e.herdExec(nil, "", "--registries-conf", permissive, "herd-searched:1")
	wantSuccess(t, r, "permissive, two unqualified-search registries")
	e.verifyImage(searched)
	e.resetStore()

	// Enforcing and not on a terminal: an error that names both candidates.
	r = e.herdExec(nil, "", "--registries-conf", enforcing, "herd-searched:1")
	wantFailure(t, r, "enforcing, ambiguous", `short name "herd-searched:1" is ambiguous`,
		e.reg.Host+"/herd-searched:1", b.Host+"/herd-searched:1", "fully qualified name")
	e.checkStoreEmpty("enforcing, ambiguous")

	// A blocked registry is refused, whichever way it is named.
	blocked := filepath.Join(e.dir, "blocked.conf")
	write(t, blocked, fmt.Sprintf(`
[[registry]]
location = %[1]q
insecure = true
blocked = true

[aliases]
"herd-aliased" = "%[1]s/team/herd-aliased"
`, b.Host))
	b.ResetCounters()
	for _, ref := range []string{aliased.Ref, "herd-aliased:1"} {
		r = e.herd("--registries-conf", blocked, ref)
		wantFailure(t, r, "blocked "+ref, ref, "registry "+b.Host+" is blocked", blocked)
	}
	e.checkStoreEmpty("blocked")
	if n := b.TotalBlobBytes(); n != 0 {
		t.Errorf("the blocked registry served %d blob bytes", n)
	}

	// $CONTAINERS_REGISTRIES_CONF stands in for the system file.
	e.omit["--registries-conf"] = true
	r = e.herdExec([]string{"CONTAINERS_REGISTRIES_CONF=" + onlyB}, "", "herd-aliased:1", "herd-searched:1")
	wantSuccess(t, r, "$CONTAINERS_REGISTRIES_CONF")
	e.verifyImage(aliased)
	e.verifyImage(searched)
}
