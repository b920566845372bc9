//go:build linux

package pin

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// BenchmarkPin measures a deploy's cost of pinning (open, hash, and the
// copy when the file is within CopyMax) and of Open once a rename over the
// path changed the pinned inode's ctime (one hash again).
//
//	go test -run - -bench . -benchtime 10x ./internal/pin/
func BenchmarkPin(b *testing.B) {
	for _, mb := range []int{10, 100} {
		path := filepath.Join(b.TempDir(), "server")
		buf := make([]byte, mb<<20)
		rand.Read(buf)
		if err := os.WriteFile(path, buf, 0o755); err != nil {
			b.Fatal(err)
		}
		for _, c := range []struct {
			name string
			opt  Options
		}{{"copy", Options{CopyMax: 1 << 30}}, {"nocopy", Options{CopyMax: -1}}} {
			b.Run(strconv.Itoa(mb)+"MB/"+c.name, func(b *testing.B) {
				b.SetBytes(int64(len(buf)))
				for b.Loop() {
					f, err := Pin(path, c.opt)
					if err != nil {
						b.Fatal(err)
					}
					f.Close()
				}
			})
		}
		b.Run(strconv.Itoa(mb)+"MB/open-after-ctime-change", func(b *testing.B) {
			f, err := Pin(path, Options{CopyMax: -1})
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				f.seen.Ctime-- // as a rename or delete does
				exe, err := f.Open()
				if err != nil {
					b.Fatal(err)
				}
				exe.Close()
			}
		})
	}
}

// BenchmarkPinUnchanged measures pinning a 100 MB file (a node binary)
// the first time against pinning it again unchanged while an earlier pin
// of it is held (Options.Known), as every deploy after the first does.
//
//	go test -run - -bench PinUnchanged -benchtime 10x ./internal/pin/
func BenchmarkPinUnchanged(b *testing.B) {
	path := filepath.Join(b.TempDir(), "node")
	buf := make([]byte, 100<<20)
	rand.Read(buf)
	if err := os.WriteFile(path, buf, 0o755); err != nil {
		b.Fatal(err)
	}
	settled(b, path)
	held, err := Pin(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer held.Close()
	for _, c := range []struct {
		name  string
		known []*File
	}{{"first", nil}, {"unchanged", []*File{held}}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				f, err := Pin(path, Options{Known: c.known})
				if err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
	}
}
