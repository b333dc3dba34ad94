package ota

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrRefused marks an update refused before anything was replaced: a bad hash, a bad
// signature, a size over the limit, no room on the disk.
var ErrRefused = errors.New("update refused")

// Download is one file to fetch: its URL, the SHA-256 and size the operator announced.
type Download struct {
	URL    string
	SHA256 string // hex
	Size   int64
	// Dir keeps the partial download (<sha256>.part), so a cut download resumes, also
	// in a later ota.update of the same file.
	Dir     string
	MaxSize int64
	Client  *http.Client
	// Attempts bounds the resumptions within one call (default 5).
	Attempts int
	// Progress is told of the bytes received so far.
	Progress func(done, total int64)
}

// Fetch downloads d.URL into d.Dir with HTTP Range resumption and returns the path of
// the complete file, whose size and SHA-256 match. The partial file survives errors.
func Fetch(ctx context.Context, d Download) (string, error) {
	want, err := hex.DecodeString(d.SHA256)
	if err != nil || len(want) != sha256.Size {
		return "", fmt.Errorf("%w: sha256 must be 64 hex digits", ErrRefused)
	}
	if d.Size <= 0 {
		return "", fmt.Errorf("%w: size must be positive", ErrRefused)
	}
	if d.MaxSize > 0 && d.Size > d.MaxSize {
		return "", fmt.Errorf("%w: size %d exceeds the limit of %d bytes (ota.max_size)", ErrRefused, d.Size, d.MaxSize)
	}
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return "", err
	}
	name := strings.ToLower(d.SHA256)
	final := filepath.Join(d.Dir, name+".bin")
	if ok, _ := fileMatches(final, d.Size, want); ok {
		return final, nil
	}
	part := filepath.Join(d.Dir, name+".part")
	have := int64(0)
	if fi, err := os.Stat(part); err == nil && fi.Size() <= d.Size {
		have = fi.Size()
	}
	if err := checkSpace(d.Dir, d.Size-have); err != nil {
		return "", err
	}
	client := d.Client
	if client == nil {
		client = &http.Client{Timeout: 0}
	}
	attempts := d.Attempts
	if attempts <= 0 {
		attempts = 5
	}
	var lastErr error
	for i := 0; i < attempts; i++ {
		if i > 0 {
			slog.Warn("ota: download interrupted; resuming", "url", d.URL, "have", have, "of", d.Size, "err", lastErr)
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(time.Duration(i) * 200 * time.Millisecond):
			}
		}
		have, lastErr = fetchOnce(ctx, client, d, part, have)
		if lastErr == nil || errors.Is(lastErr, ErrRefused) || ctx.Err() != nil {
			break
		}
	}
	if lastErr != nil {
		return "", lastErr
	}
	ok, err := fileMatches(part, d.Size, want)
	if err != nil {
		return "", err
	}
	if !ok {
		os.Remove(part)
		return "", fmt.Errorf("%w: the download's SHA-256 is not %s", ErrRefused, d.SHA256)
	}
	if err := os.Rename(part, final); err != nil {
		return "", err
	}
	return final, nil
}

// fetchOnce asks for the bytes from have on and appends them to part; it returns how
// many bytes part holds afterwards.
func fetchOnce(ctx context.Context, client *http.Client, d Download, part string, have int64) (int64, error) {
	if have == d.Size {
		return have, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.URL, nil)
	if err != nil {
		return have, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	resp, err := client.Do(req)
	if err != nil {
		return have, err
	}
	defer resp.Body.Close()
	flags := os.O_WRONLY | os.O_CREATE
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		start, ok := contentRangeStart(resp.Header.Get("Content-Range"))
		if !ok || start != have {
			return have, fmt.Errorf("server answered range %q for bytes %d-", resp.Header.Get("Content-Range"), have)
		}
		flags |= os.O_APPEND
	case resp.StatusCode == http.StatusOK:
		have = 0 // no range support: start over
		flags |= os.O_TRUNC
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		os.Remove(part)
		return 0, fmt.Errorf("server refused the range from %d", have)
	default:
		return have, fmt.Errorf("%w: GET %s: %s", ErrRefused, d.URL, resp.Status)
	}
	if resp.ContentLength >= 0 && have+resp.ContentLength > d.Size {
		return have, fmt.Errorf("%w: the server sends %d bytes, %d announced", ErrRefused, have+resp.ContentLength, d.Size)
	}
	f, err := os.OpenFile(part, flags, 0o600)
	if err != nil {
		return have, err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if have+int64(n) > d.Size {
				return have, fmt.Errorf("%w: the server sends more than the %d bytes announced", ErrRefused, d.Size)
			}
			if _, err := f.Write(buf[:n]); err != nil {
				return have, err
			}
			have += int64(n)
			if d.Progress != nil {
				d.Progress(have, d.Size)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			f.Sync()
			return have, rerr
		}
	}
	if err := f.Sync(); err != nil {
		return have, err
	}
	if have != d.Size {
		return have, fmt.Errorf("the body ended after %d of %d bytes", have, d.Size)
	}
	return have, nil
}

func contentRangeStart(v string) (int64, bool) {
	v, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, false
	}
	s, _, ok := strings.Cut(v, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// fileMatches reports whether the file at path has the size and SHA-256.
func fileMatches(path string, size int64, want []byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() != size {
		return false, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	return hex.EncodeToString(h.Sum(nil)) == hex.EncodeToString(want), nil
}

// checkSpace refuses a download that would leave less than a margin free in dir
// (the state lives on the same partition on the appliance).
func checkSpace(dir string, need int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("free space of %s: %w", dir, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	const margin = 16 << 20
	if need+margin > free {
		return fmt.Errorf("%w: %d bytes needed in %s, %d free (keeping %d spare)", ErrRefused, need, dir, free, margin)
	}
	return nil
}
