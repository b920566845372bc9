// Package cpus tells how many CPUs the process may really use: the CPUs
// of its affinity mask (what runtime.NumCPU counts), and less when a
// cgroup CPU quota (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us over
// cpu.cfs_period_us) allows less, rounded up. A pod limited to 2 CPUs on a
// 64-core node gets 2, not 64. Go's runtime reads the same quota for its
// default GOMAXPROCS since Go 1.25.
package cpus

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Available returns the number of CPUs the process may use, at least 1,
// and where that number comes from, e.g. "cgroup cpu.max 200000 100000"
// or "CPU affinity".
func Available() (n int, from string) {
	return Detect("/", affinity())
}

// Detect is Available with the file system under root (so "/proc/self/cgroup"
// is read as root/proc/self/cgroup) and the count of the affinity mask
// given; an affinity of 0 or less counts as unknown (1 if no quota says
// more).
func Detect(root string, affinity int) (n int, from string) {
	n, from = affinity, "CPU affinity"
	if affinity <= 0 {
		n, from = 1, "unknown CPU count"
	}
	if q, ok := quota(root); ok && (q.cpus() < n || affinity <= 0) {
		n, from = q.cpus(), q.from
	}
	return max(n, 1), from
}

// limit is a cgroup CPU bandwidth limit: quota µs of CPU time per period
// µs.
type limit struct {
	quota, period int64
	from          string
}

// cpus is the limit rounded up to whole CPUs, at least 1.
func (l limit) cpus() int {
	return int(max((l.quota+l.period-1)/l.period, 1))
}

// less reports whether l allows less CPU than m.
func (l limit) less(m limit) bool {
	// quota/period < quota'/period', without division.
	return l.quota*m.period < m.quota*l.period
}

// quota finds the tightest CPU limit of the process's cgroups, from its
// own up to the root of each hierarchy that holds the cpu controller.
func quota(root string) (limit, bool) {
	groups, err := readCgroups(filepath.Join(root, "proc/self/cgroup"))
	if err != nil {
		return limit{}, false
	}
	mounts, err := readMounts(filepath.Join(root, "proc/self/mountinfo"))
	if err != nil {
		return limit{}, false
	}
	var best limit
	found := false
	for _, m := range mounts {
		path, ok := groups[m.version]
		if !ok {
			continue
		}
		// The process's cgroup as seen through this mount: the mount
		// shows the hierarchy from m.root down.
		rel, ok := strings.CutPrefix(path, m.root)
		if !ok || (rel != "" && !strings.HasPrefix(rel, "/") && m.root != "/") {
			continue
		}
		dir := filepath.Join(root, m.point, rel)
		top := filepath.Join(root, m.point)
		for {
			if l, ok := readLimit(dir, m.version); ok && (!found || l.less(best)) {
				best, found = l, true
			}
			if dir == top || len(dir) < len(top) {
				break
			}
			dir = filepath.Dir(dir)
		}
	}
	return best, found
}

// readCgroups reads /proc/self/cgroup: the cgroup of the process in the
// v2 hierarchy (key 2) and in the v1 hierarchy holding the cpu
// controller (key 1).
func readCgroups(path string) (map[int]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	groups := map[int]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		controllers, path, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		switch {
		case id == "0" && controllers == "":
			groups[2] = path
		case hasItem(controllers, "cpu"):
			groups[1] = path
		}
	}
	return groups, sc.Err()
}

type mount struct {
	version     int    // 1 or 2
	root, point string // the hierarchy's path shown, and where
}

// readMounts finds the cgroup2 mounts and the cgroup v1 mounts of the cpu
// controller in /proc/self/mountinfo.
func readMounts(path string) ([]mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mount-point options [optional...] - fstype source super-options
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, p := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(p) < 1 {
			continue
		}
		m := mount{root: unescape(f[3]), point: unescape(f[4])}
		switch {
		case p[0] == "cgroup2":
			m.version = 2
		case p[0] == "cgroup" && len(p) >= 3 && hasItem(p[2], "cpu"):
			m.version = 1
		default:
			continue
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func hasItem(list, item string) bool {
	for _, c := range strings.Split(list, ",") {
		if c == item {
			return true
		}
	}
	return false
}

// readLimit reads the CPU limit of the cgroup directory dir, if it has one.
func readLimit(dir string, version int) (limit, bool) {
	if version == 2 {
		b, err := os.ReadFile(filepath.Join(dir, "cpu.max"))
		if err != nil {
			return limit{}, false
		}
		f := strings.Fields(string(b))
		if len(f) != 2 || f[0] == "max" {
			return limit{}, false
		}
		q, err1 := strconv.ParseInt(f[0], 10, 64)
		p, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil || q <= 0 || p <= 0 {
			return limit{}, false
		}
		return limit{q, p, fmt.Sprintf("cgroup cpu.max %d %d", q, p)}, true
	}
	q, ok1 := readInt(filepath.Join(dir, "cpu.cfs_quota_us"))
	p, ok2 := readInt(filepath.Join(dir, "cpu.cfs_period_us"))
	if !ok1 || !ok2 || q <= 0 || p <= 0 {
		return limit{}, false
	}
	return limit{q, p, fmt.Sprintf("cgroup cpu.cfs_quota_us %d, cpu.cfs_period_us %d", q, p)}, true
}

func readInt(path string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return v, err == nil
}
