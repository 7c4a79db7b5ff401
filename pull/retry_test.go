package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"syscall"
	"testing"

	"github.com/docker/distribution/registry/api/errcode"
	v2 "github.com/docker/distribution/registry/api/v2"
	"go.podman.io/image/v5/docker"

	"github.com/herd-project/herd/commit"
)

// The errors are built as containers/image builds them, wrapped as copy.Image
// wraps them.
func TestRetryable(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("copying layer: reading blob sha256:abc: %w", err) }
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"503", wrap(docker.UnexpectedHTTPStatusError{StatusCode: 503}), true},
		{"500", wrap(docker.UnexpectedHTTPStatusError{StatusCode: 500}), true},
		{"429 after containers/image's own retries", wrap(docker.ErrTooManyRequests), true},
		{"429 TOOMANYREQUESTS body", wrap(errcode.Error{Code: errcode.ErrorCodeTooManyRequests}), true},
		{"connection reset", wrap(&url.Error{Op: "Get", URL: "http://r/v2/", Err: &net.OpError{Op: "read", Err: syscall.ECONNRESET}}), true},
		{"connection refused", wrap(&url.Error{Op: "Get", URL: "http://r/v2/", Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}), true},
		{"body cut short", wrap(fmt.Errorf("(heuristic tuning data: ...): %w", io.ErrUnexpectedEOF)), true},
		{"stalled", wrap(&stallError{}), true},
		{"a file of the layer being committed vanished", wrap(&commit.FetchError{Fetched: true, Err: fmt.Errorf("rename: %w", commit.ErrFileVanished)}), true},
		{"404 BLOB_UNKNOWN", wrap(errcode.Error{Code: v2.ErrorCodeBlobUnknown}), false},
		{"404 MANIFEST_UNKNOWN", wrap(errcode.Error{Code: v2.ErrorCodeManifestUnknown}), false},
		{"401", wrap(docker.ErrUnauthorizedForCredentials{Err: errors.New("bad password")}), false},
		{"403 DENIED", wrap(errcode.Error{Code: errcode.ErrorCodeDenied}), false},
		{"plain 404", wrap(docker.UnexpectedHTTPStatusError{StatusCode: 404}), false},
		{"digest mismatch", wrap(fmt.Errorf("happened during read: %w", errors.New("Digest did not match, expected sha256:1, got sha256:2"))), false},
		{"cancelled", wrap(context.Canceled), false},
		{"nil", nil, false},
	} {
		if got := retryable(c.err); got != c.want {
			t.Errorf("%s: retryable(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}
