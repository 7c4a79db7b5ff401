package testregistry

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBasicAuth(t *testing.T) {
	r := StartT(t, Options{Users: map[string]string{"alice": "s3cret"}})
	for _, c := range []struct {
		name       string
		user, pass string
		want       int
	}{
		{"no credentials", "", "", http.StatusUnauthorized},
		{"wrong password", "alice", "nope", http.StatusUnauthorized},
		{"unknown user", "bob", "s3cret", http.StatusUnauthorized},
		{"right password", "alice", "s3cret", http.StatusOK},
	} {
		req, _ := http.NewRequest(http.MethodGet, r.URL+"/v2/", nil)
		if c.user != "" {
			req.SetBasicAuth(c.user, c.pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s: GET /v2/ answered %s, want %d", c.name, resp.Status, c.want)
		}
		if c.want == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("%s: challenge %q, want Basic", c.name, resp.Header.Get("WWW-Authenticate"))
		}
	}
}

func TestTLSCertsAndClientCertificates(t *testing.T) {
	r := StartT(t, Options{TLS: true})
	if !strings.HasPrefix(r.URL, "https://") || r.Certs == nil {
		t.Fatalf("URL %s, certs %v: want HTTPS with certificates", r.URL, r.Certs)
	}
	dir := filepath.Join(t.TempDir(), "certs.d", r.Host)
	if err := r.Certs.WriteDir(dir, true); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "client.cert", "client.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("WriteDir: %v", err)
		}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(r.Certs.CA) {
		t.Fatal("the CA certificate does not parse")
	}
	clientCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.cert"), filepath.Join(dir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	get := func(cfg *tls.Config) error {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
		defer c.CloseIdleConnections()
		resp, err := c.Get(r.URL + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	}

	if err := get(&tls.Config{}); err == nil {
		t.Error("a client that does not trust the test CA connected")
	}
	if err := get(&tls.Config{RootCAs: pool}); err != nil {
		t.Errorf("with the CA: %v", err)
	}
	r.RequireClientCert(true)
	if err := get(&tls.Config{RootCAs: pool}); err == nil {
		t.Error("client certificates required, but a client without one got through")
	}
	if err := get(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{clientCert}}); err != nil {
		t.Errorf("with the client certificate: %v", err)
	}
	r.RequireClientCert(false)
	if err := get(&tls.Config{RootCAs: pool}); err != nil {
		t.Errorf("client certificates no longer required: %v", err)
	}
}
