package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type machine struct {
	CPU      string            `json:"cpu"`
	Cores    int               `json:"cores"`
	MemKiB   int               `json:"mem_total_kib"`
	Kernel   string            `json:"kernel"`
	OS       string            `json:"os"`
	Go       string            `json:"go"`
	Date     string            `json:"date"`
	StateFS  string            `json:"state_dir_filesystem"`
	Packages map[string]string `json:"packages"`
	// Other work on the machine when the benchmark began, after waiting for it to
	// calm down (cores), and how long that wait was.
	OthersAtStart float64 `json:"cpu_others_at_start_cores"`
	QuietWait     string  `json:"quiet_wait"`
}

// waitQuiet waits, at most limit, until other processes have used less than a third
// of a core for three seconds in a row: the figures are ratios of measurements
// taken minutes apart, and a build or test run next to them skews both sides
// differently. It returns the wait and the last second's load.
func waitQuiet(limit time.Duration) (time.Duration, float64) {
	start := time.Now()
	calm, rest := 0, 0.0
	for {
		c0 := takeCPU(0)
		time.Sleep(time.Second)
		_, _, rest = takeCPU(0).since(c0, 1)
		if rest < 0.33 {
			calm++
		} else {
			calm = 0
		}
		if calm >= 3 || time.Since(start) >= limit {
			break
		}
	}
	return time.Since(start), rest
}

func describeMachine(stateDir string) machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version(), Date: time.Now().UTC().Format(time.RFC3339),
		Packages: map[string]string{}}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if fs := strings.Fields(sc.Text()); len(fs) >= 2 && fs[0] == "MemTotal:" {
				m.MemKiB, _ = strconv.Atoi(fs[1])
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	for _, p := range []string{"softhsm2", "mosquitto", "openssl", "libengine-pkcs11-openssl"} {
		if b, err := exec.Command("dpkg-query", "-W", "-f=${Version}", p).Output(); err == nil {
			m.Packages[p] = string(b)
		}
	}
	m.StateFS = fsType(stateDir)
	return m
}

// fsType names the filesystem holding dir: the reply cache fsyncs there, and tmpfs
// would hide that cost.
func fsType(dir string) string {
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return "unknown"
	}
	if name, ok := map[int64]string{0xEF53: "ext4", 0x01021994: "tmpfs", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x794c7630: "overlayfs"}[int64(st.Type)]; ok {
		return name
	}
	return fmt.Sprintf("0x%x", st.Type)
}
