package testregistry

import (
	"bytes"
	"fmt"
	"net/http"

	digest "github.com/opencontainers/go-digest"
)

// PutBlob uploads data to repo with the two-step (POST, PUT) monolithic
// upload of the distribution API, as any client may, whatever the data is:
// tests use it for blobs containers/image would refuse to push.
func (r *Registry) PutBlob(repo string, data []byte) (digest.Digest, error) {
	resp, err := http.Post(r.URL+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("starting an upload to %s: %s", repo, resp.Status)
	}
	loc, err := resp.Location()
	if err != nil {
		return "", err
	}
	d := digest.FromBytes(data)
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	req, err := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(data))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("finishing an upload to %s: %s", repo, resp.Status)
	}
	return d, nil
}
