//go:build linux

package workerpool

import (
	"bufio"
	"os"
)

func (l *OSLauncher) stderrWriter() func([]byte) {
	w := l.Stderr
	if w == nil {
		w = os.Stderr
	}
	return func(line []byte) {
		l.stderrMu.Lock()
		w.Write(line)
		l.stderrMu.Unlock()
	}
}

func (p *osProcess) copyStderr(r *os.File, write func([]byte)) {
	defer close(p.copied)
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			p.tail.Write(line)
			if line[len(line)-1] != '\n' && err != bufio.ErrBufferFull {
				line = append(line, '\n')
			}
			write(line)
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}
