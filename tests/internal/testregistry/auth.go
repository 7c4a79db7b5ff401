package testregistry

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/distribution/distribution/v3/configuration"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd" // registers the "htpasswd" access controller
	"golang.org/x/crypto/bcrypt"
)

// configureAuth makes the registry require HTTP basic auth for every
// request, through distribution's own htpasswd access controller (the
// `auth: htpasswd:` section of a registry config), with users as
// name → password. The controller re-reads the file on each request, so it
// lives in a temporary directory until cleanup.
func configureAuth(cfg *configuration.Configuration, users map[string]string) (cleanup func(), err error) {
	names := make([]string, 0, len(users))
	for name := range users {
		if name == "" || strings.ContainsAny(name, ":\n") {
			return nil, fmt.Errorf("testregistry: invalid user name %q", name)
		}
		names = append(names, name)
	}
	slices.Sort(names)
	var htpasswd strings.Builder
	for _, name := range names {
		// The lowest cost: the registry checks the hash on every request.
		hash, err := bcrypt.GenerateFromPassword([]byte(users[name]), bcrypt.MinCost)
		if err != nil {
			return nil, fmt.Errorf("testregistry: hashing the password of %s: %w", name, err)
		}
		fmt.Fprintf(&htpasswd, "%s:%s\n", name, hash)
	}
	dir, err := os.MkdirTemp("", "testregistry-auth-")
	if err != nil {
		return nil, fmt.Errorf("testregistry: %w", err)
	}
	path := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(path, []byte(htpasswd.String()), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("testregistry: %w", err)
	}
	cfg.Auth = configuration.Auth{"htpasswd": configuration.Parameters{"realm": "testregistry", "path": path}}
	return func() { os.RemoveAll(dir) }, nil
}
