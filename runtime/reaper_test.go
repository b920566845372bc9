//go:build linux

package runtime

import (
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// The children come from /proc/self/task/*/children, as a scan of /proc
// finds them; one that exited and is not reaped is a zombie child.
func TestZombieChildren(t *testing.T) {
	live := exec.Command("sleep", "30")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { live.Process.Kill(); live.Wait() }()
	dead := exec.Command("true")
	if err := dead.Start(); err != nil {
		t.Fatal(err)
	}
	defer dead.Wait()
	end := time.Now().Add(10 * time.Second)
	for !slices.Contains(zombieChildren(), dead.Process.Pid) {
		if time.Now().After(end) {
			t.Fatalf("%d exited but is not among the zombie children %v", dead.Process.Pid, zombieChildren())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if slices.Contains(zombieChildren(), live.Process.Pid) {
		t.Errorf("the live child %d is listed as a zombie", live.Process.Pid)
	}
	got := childPIDs()
	for pid := range childrenOf(os.Getpid()) {
		if (pid == live.Process.Pid || pid == dead.Process.Pid) && !slices.Contains(got, pid) {
			t.Errorf("child %d, which /proc lists, is not among the children %v", pid, got)
		}
	}
}
