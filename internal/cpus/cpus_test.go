package cpus

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// fakeRoot lays out files under a temporary root: path → content.
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for path, content := range files {
		full := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const (
	v2Mount = "30 22 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
	v1Mount = "25 22 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n" +
		"31 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n" +
		"32 25 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
)

func TestDetect(t *testing.T) {
	for _, c := range []struct {
		name     string
		files    map[string]string
		affinity int
		want     int
		from     string
	}{
		{"no cgroup files", nil, 8, 8, "CPU affinity"},
		{"v2, 2 CPUs of 64", map[string]string{
			"proc/self/cgroup":                       "0::/kubepods/pod1/c1\n",
			"proc/self/mountinfo":                    v2Mount,
			"sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "200000 100000\n",
		}, 64, 2, "cgroup cpu.max 200000 100000"},
		{"v2, 1.5 CPUs rounds up", map[string]string{
			"proc/self/cgroup":      "0::/\n",
			"proc/self/mountinfo":   v2Mount,
			"sys/fs/cgroup/cpu.max": "150000 100000\n",
		}, 64, 2, "cgroup cpu.max 150000 100000"},
		{"v2, a tenth of a CPU is 1", map[string]string{
			"proc/self/cgroup":      "0::/\n",
			"proc/self/mountinfo":   v2Mount,
			"sys/fs/cgroup/cpu.max": "10000 100000\n",
		}, 4, 1, "cgroup cpu.max 10000 100000"},
		{"v2, no limit", map[string]string{
			"proc/self/cgroup":        "0::/a\n",
			"proc/self/mountinfo":     v2Mount,
			"sys/fs/cgroup/a/cpu.max": "max 100000\n",
		}, 6, 6, "CPU affinity"},
		{"v2, the parent's limit is tighter", map[string]string{
			"proc/self/cgroup":          "0::/a/b\n",
			"proc/self/mountinfo":       v2Mount,
			"sys/fs/cgroup/a/cpu.max":   "300000 100000\n",
			"sys/fs/cgroup/a/b/cpu.max": "max 100000\n",
		}, 16, 3, "cgroup cpu.max 300000 100000"},
		{"v2, quota above the affinity", map[string]string{
			"proc/self/cgroup":      "0::/\n",
			"proc/self/mountinfo":   v2Mount,
			"sys/fs/cgroup/cpu.max": "800000 100000\n",
		}, 2, 2, "CPU affinity"},
		{"v1, container without a cgroup namespace", map[string]string{
			"proc/self/cgroup": "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
			// The container sees its own cgroup at the mount point.
			"proc/self/mountinfo": "25 22 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n" +
				"31 25 0:28 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,relatime - cgroup cgroup rw,cpu,cpuacct\n",
			"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us":  "50000\n",
			"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
		}, 32, 1, "cgroup cpu.cfs_quota_us 50000, cpu.cfs_period_us 100000"},
		{"v1, unlimited", map[string]string{
			"proc/self/cgroup":                            "4:cpu,cpuacct:/\n",
			"proc/self/mountinfo":                         v1Mount,
			"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us":  "-1\n",
			"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
		}, 4, 4, "CPU affinity"},
		{"v1, nested", map[string]string{
			"proc/self/cgroup":                                "1:cpu:/app\n",
			"proc/self/mountinfo":                             v1Mount,
			"sys/fs/cgroup/cpu,cpuacct/app/cpu.cfs_quota_us":  "250000\n",
			"sys/fs/cgroup/cpu,cpuacct/app/cpu.cfs_period_us": "100000\n",
		}, 64, 3, "cgroup cpu.cfs_quota_us 250000, cpu.cfs_period_us 100000"},
		{"a cgroup outside the mount is not read", map[string]string{
			"proc/self/cgroup":      "0::/other\n",
			"proc/self/mountinfo":   "30 22 0:27 /mine /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			"sys/fs/cgroup/cpu.max": "100000 100000\n",
		}, 8, 8, "CPU affinity"},
		{"garbage", map[string]string{
			"proc/self/cgroup":      "nonsense\n0::/\n",
			"proc/self/mountinfo":   "bad line\n" + v2Mount,
			"sys/fs/cgroup/cpu.max": "lots 0\n",
		}, 3, 3, "CPU affinity"},
		{"affinity unknown", nil, 0, 1, "unknown CPU count"},
		{"affinity unknown, a quota", map[string]string{
			"proc/self/cgroup":      "0::/\n",
			"proc/self/mountinfo":   v2Mount,
			"sys/fs/cgroup/cpu.max": "400000 100000\n",
		}, 0, 4, "cgroup cpu.max 400000 100000"},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := fakeRoot(t, c.files)
			n, from := Detect(root, c.affinity)
			if n != c.want || from != c.from {
				t.Errorf("Detect = %d, %q; want %d, %q", n, from, c.want, c.from)
			}
		})
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/a\040b\\`); got != `/a b\\` {
		t.Errorf("unescape = %q", got)
	}
}

// On this machine: never more than the runtime's own count, at least 1.
func TestAvailable(t *testing.T) {
	n, from := Available()
	if n < 1 || n > runtime.NumCPU() || from == "" {
		t.Errorf("Available() = %d, %q; NumCPU %d", n, from, runtime.NumCPU())
	}
	t.Logf("%d CPUs (%s)", n, from)
}
