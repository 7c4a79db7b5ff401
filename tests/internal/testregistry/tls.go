package testregistry

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// Certs are the PEM files of a TLS registry's own test CA: the CA
// certificate, and a client certificate and key it signed.
type Certs struct {
	CA, ClientCert, ClientKey []byte
}

// WriteDir writes the files as a containers-certs.d(5) host directory does,
// the layout of --cert-dir and /etc/containers/certs.d/HOST:PORT: ca.crt,
// and with client also client.cert and client.key.
func (c *Certs) WriteDir(dir string, client bool) error {
	files := map[string][]byte{"ca.crt": c.CA}
	if client {
		files["client.cert"], files["client.key"] = c.ClientCert, c.ClientKey
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// RequireClientCert makes the registry refuse, in the TLS handshake, new
// connections without a client certificate signed by its CA (on), or accept
// them again (off). Tests push fixtures first, then turn it on. Only for a
// registry started with Options.TLS.
func (r *Registry) RequireClientCert(on bool) {
	r.requireClientCert.Store(on)
}

// startTLS starts the server with HTTPS. Failed handshakes (tests of
// untrusted certificates) are expected, so the server does not log them.
func (r *Registry) startTLS() error {
	cfg, certs, err := newTLS(&r.requireClientCert)
	if err != nil {
		return err
	}
	r.server.TLS, r.Certs = cfg, certs
	r.server.Config.ErrorLog = log.New(io.Discard, "", 0)
	r.server.StartTLS()
	return nil
}

// newTLS makes a CA, a server certificate for 127.0.0.1 and localhost and a
// client certificate, and the server's TLS configuration; require switches
// client certificates on per handshake.
func newTLS(require *atomic.Bool) (*tls.Config, *Certs, error) {
	caKey, caCert, caDER, err := newCert(nil, nil, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "testregistry CA"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	})
	if err != nil {
		return nil, nil, err
	}
	serverKey, _, serverDER, err := newCert(caCert, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, nil, err
	}
	clientKey, _, clientDER, err := newCert(caCert, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "testregistry client"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, nil, err
	}
	clientKeyDER, err := x509.MarshalPKCS8PrivateKey(clientKey)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	base := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{serverDER}, PrivateKey: serverKey}},
		ClientCAs:    pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
	}
	cfg := base.Clone()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		if !require.Load() {
			return nil, nil // cfg itself
		}
		strict := base.Clone()
		strict.ClientAuth = tls.RequireAndVerifyClientCert
		return strict, nil
	}
	return cfg, &Certs{
		CA:         pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		ClientCert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: clientDER}),
		ClientKey:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: clientKeyDER}),
	}, nil
}

// newCert makes a key and a certificate from tmpl, signed by parent (self-signed if nil).
func newCert(parent *x509.Certificate, parentKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (*ecdsa.PrivateKey, *x509.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("testregistry: generating a key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("testregistry: %w", err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("testregistry: creating certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("testregistry: %w", err)
	}
	return key, cert, der, nil
}
