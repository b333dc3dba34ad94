// Package vmtest boots the appliance image (image/build.sh) in QEMU and checks it
// from outside as a user would: over MQTT through the broker in the image, and a
// root shell on the second serial port. `make vm-test` builds the image and runs it;
// without IOT_HSM_VM_IMAGE the tests skip.
package vmtest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iot-hsm/iot-hsm/internal/brokertest"
	"github.com/iot-hsm/iot-hsm/internal/syncbuf"
)

// imageDir is the built image (disk.img, keys/, bundles), or the test skips.
func imageDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("IOT_HSM_VM_IMAGE")
	if dir == "" {
		t.Skip("IOT_HSM_VM_IMAGE is not set: `make vm-test` builds the image and boots it")
	}
	if _, err := os.Stat(filepath.Join(dir, "disk.img")); err != nil {
		t.Fatalf("no image in %s: %v", dir, err)
	}
	return dir
}

// VM is one QEMU machine on a copy-on-write layer over the image; its disk survives
// Kill and Start, as a real disk survives a power cut.
type VM struct {
	t *testing.T
	*machine
}

// machine is what the VMs made by For share: the disk and the running QEMU.
type machine struct {
	image    string
	dir      string
	MQTTPort int
	shell    *shell

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	stopping bool  // Kill is under way: an exit is not a reboot
	err      error // a restart after a reboot that failed

	arch arch
}

// arch is what differs between the architectures the image is built for.
type arch struct {
	qemu       string   // the system emulator
	board      []string // machine and CPU
	code, vars string   // the UEFI firmware and its variables' template
	shellPort  []string // the test shell's port, on the chardev "sh"
}

var arches = map[string]arch{
	"amd64": {
		qemu:  "qemu-system-x86_64",
		board: []string{"-M", "pc", "-cpu", "max"},
		code:  "/usr/share/OVMF/OVMF_CODE_4M.fd", vars: "/usr/share/OVMF/OVMF_VARS_4M.fd",
		shellPort: []string{"-serial", "chardev:sh"}, // ttyS1
	},
	// virt has one UART (ttyAMA0, the console): the shell is on a virtio console
	// (hvc0). pauth-impdef: TCG's own pointer authentication, much faster to emulate
	// than the architected one and the same to the guest.
	"arm64": {
		qemu:  "qemu-system-aarch64",
		board: []string{"-M", "virt", "-cpu", "max,pauth-impdef=on"},
		code:  "/usr/share/AAVMF/AAVMF_CODE.fd", vars: "/usr/share/AAVMF/AAVMF_VARS.fd",
		shellPort: []string{"-device", "virtio-serial-pci", "-device", "virtconsole,chardev=sh"},
	},
}

// archFor is the image's architecture: IOT_HSM_VM_ARCH, set by make vm-test from
// ARCH (amd64 when unset).
func archFor(t *testing.T) arch {
	t.Helper()
	name := os.Getenv("IOT_HSM_VM_ARCH")
	if name == "" {
		name = "amd64"
	}
	a, ok := arches[name]
	if !ok {
		t.Fatalf("IOT_HSM_VM_ARCH=%s: no QEMU machine for it (amd64 or arm64)", name)
	}
	a.board = append([]string{"-accel", accel(name)}, a.board...)
	return a
}

// accel is KVM when the image is this machine's architecture and /dev/kvm opens,
// QEMU's emulation (TCG) otherwise.
func accel(arch string) string {
	if arch != runtime.GOARCH {
		return "tcg"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	f.Close()
	return "kvm"
}

// NewVM makes the machine's disk layer and firmware variables, and boots it.
func NewVM(t *testing.T) *VM {
	t.Helper()
	if os.Getenv("IOT_HSM_VM_FLAVOR") == "raspi" {
		t.Skip("the Raspberry Pi image boots in QEMU's raspi3b: TestRaspberryPi")
	}
	image := imageDir(t)
	dir, err := os.MkdirTemp("", "vmtest")
	if err != nil {
		t.Fatal(err)
	}
	vm := &VM{t: t, machine: &machine{image: image, dir: dir, MQTTPort: brokertest.FreePort(t), shell: newShell(),
		arch: archFor(t)}}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(image, "disk.img"), "-F", "raw",
		vm.path("disk.qcow2"))
	vars, err := os.ReadFile(vm.arch.vars)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vm.path("vars.fd"), vars, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(vm.path("console.log"))
			t.Logf("serial console (last 6000 bytes):\n%s", tail(b, 6000))
		}
		os.RemoveAll(dir)
	})
	vm.Start()
	return vm
}

func (m *machine) path(name string) string { return filepath.Join(m.dir, name) }

// qemuArgs: UEFI firmware, the disk, the broker's port forwarded to the host, the
// console on a file, the test shell and the monitor on sockets, USB for YubiKeys.
// A reboot of the guest ends QEMU (-no-reboot) and the harness starts it again: a
// cold start, as a real board's reset is. The emulated warm reset of QEMU with OVMF
// sometimes left the guest's kernel stuck in its EFI stub under TCG, never a cold
// start.
func (vm *VM) qemuArgs() []string {
	a := vm.arch
	args := append(append([]string{}, a.board...), "-smp", "2", "-m", "1024", "-nographic", "-no-reboot",
		"-drive", "if=pflash,format=raw,readonly=on,file="+a.code,
		"-drive", "if=pflash,format=raw,file="+vm.path("vars.fd"),
		"-drive", "file="+vm.path("disk.qcow2")+",format=qcow2,if=virtio",
		"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:8883", vm.MQTTPort),
		"-device", "virtio-net-pci,netdev=n0,romfile=",
		"-chardev", "file,id=con,append=on,path="+vm.path("console.log"),
		"-serial", "chardev:con",
		"-chardev", "socket,id=sh,path="+vm.path("shell.sock")+",server=on,wait=off")
	args = append(args, a.shellPort...)
	return append(args,
		"-monitor", "unix:"+vm.path("monitor.sock")+",server=on,wait=off",
		"-device", "qemu-xhci,id=xhci")
}

// Start powers the machine on and connects to its shell socket.
func (vm *VM) Start() {
	vm.t.Helper()
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if err := vm.launch(vm.qemuArgs()); err != nil {
		vm.t.Fatal(err)
	}
}

// launch starts QEMU and attaches the shell (mu held). When QEMU ends by itself
// with status 0, the guest rebooted: it is started again.
func (m *machine) launch(args []string) error {
	cmd := exec.Command("nice", append([]string{"-n", "10", m.arch.qemu}, args...)...)
	var out syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("qemu: %v", err)
	}
	exited := make(chan struct{})
	m.cmd, m.exited = cmd, exited
	go func() {
		err := cmd.Wait()
		close(exited)
		m.mu.Lock()
		defer m.mu.Unlock()
		if err == nil && !m.stopping && m.cmd == cmd {
			if m.err = m.launch(args); m.err != nil {
				m.cmd = nil
			}
		}
	}()
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		c, err := net.Dial("unix", m.path("shell.sock"))
		if err == nil {
			m.shell.attach(c)
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("qemu exited: %s", out.String())
		default:
		}
		if time.Now().After(end) {
			return fmt.Errorf("qemu's shell socket: %v", err)
		}
	}
}

// Kill cuts the power: QEMU is killed, nothing in the guest is told.
func (vm *VM) Kill() {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.err != nil {
		vm.t.Errorf("restarting QEMU after a reboot: %v", vm.err)
		vm.err = nil
	}
	if vm.cmd == nil {
		return
	}
	vm.stopping = true
	vm.cmd.Process.Kill()
	<-vm.exited
	vm.stopping = false
	vm.cmd = nil
}

// For is vm reporting to t (a subtest) instead of the test that made it.
func (vm *VM) For(t *testing.T) *VM { return &VM{t: t, machine: vm.machine} }

// Console is what the guest wrote on its serial console (ttyS0, arm64's ttyAMA0) so far.
func (vm *VM) Console() string {
	b, _ := os.ReadFile(vm.path("console.log"))
	return string(b)
}

// Monitor sends one command to QEMU's human monitor and returns its answer.
func (vm *VM) Monitor(command string) string {
	vm.t.Helper()
	c, err := net.Dial("unix", vm.path("monitor.sock"))
	if err != nil {
		vm.t.Fatalf("monitor: %v", err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	readPrompt := func() string {
		var sb strings.Builder
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for !strings.HasSuffix(sb.String(), "(qemu) ") {
			b, err := r.ReadByte()
			if err != nil {
				vm.t.Fatalf("monitor %q: %v (%s)", command, err, sb.String())
			}
			sb.WriteByte(b)
		}
		return sb.String()
	}
	readPrompt()
	fmt.Fprintf(c, "%s\n", command)
	return strings.TrimSuffix(readPrompt(), "(qemu) ")
}

// Sh runs a command line in the guest's root shell and returns its output; a
// non-zero exit fails the test.
func (vm *VM) Sh(cmdline string) string {
	vm.t.Helper()
	out, code := vm.shell.run(cmdline, 60*time.Second)
	if code != 0 {
		vm.t.Fatalf("guest: %s: exit %d:\n%s", cmdline, code, out)
	}
	return out
}

// Try runs a command line in the guest and returns its output and exit status.
func (vm *VM) Try(cmdline string) (string, int) {
	return vm.shell.run(cmdline, 60*time.Second)
}

// WaitShell waits for the guest's shell to say it listens (the machine booted).
func (vm *VM) WaitShell(timeout time.Duration) {
	vm.t.Helper()
	if !vm.shell.waitReady(timeout) {
		vm.t.Fatalf("the guest's shell did not come up within %v", timeout)
	}
}

// Reboot asks the guest to reboot; WaitShell then waits for the shell of the next boot.
func (vm *VM) Reboot() {
	vm.shell.run("systemctl reboot", 5*time.Second)
}

// shell talks to bash on the guest's ttyS1 (arm64: hvc0): each command is followed by a marker
// with its exit status, built so that the command line itself never matches it.
type shell struct {
	mu    sync.Mutex // one command at a time
	buf   syncbuf.Buffer
	seq   int
	ready int // banners seen: one per start of the shell

	connMu sync.Mutex
	conn   net.Conn // to the QEMU running now
}

const banner = "@@SHELL-READY@@"

// waitReady waits for a banner after the last one seen.
func (s *shell) waitReady(timeout time.Duration) bool {
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if n := strings.Count(s.buf.String(), banner); n > s.ready {
			s.ready = n
			return true
		}
	}
	return false
}

// newShell is the shell of one machine; what every QEMU started for it says goes
// into the same buffer, so banners count the boots.
func newShell() *shell { return &shell{} }

// attach reads the guest's shell from c, the serial socket of a QEMU just started.
func (s *shell) attach(c net.Conn) {
	s.connMu.Lock()
	s.conn = c
	s.connMu.Unlock()
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := c.Read(b)
			s.buf.Write(b[:n])
			if err != nil {
				return
			}
		}
	}()
}

func (s *shell) write(line string) {
	s.connMu.Lock()
	c := s.conn
	s.connMu.Unlock()
	if c != nil {
		io.WriteString(c, line)
	}
}

func (s *shell) run(cmdline string, timeout time.Duration) (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	tag := fmt.Sprintf("%d-%d", time.Now().UnixNano(), s.seq)
	start := len(s.buf.String())
	s.write(fmt.Sprintf("{ %s ; } </dev/null 2>&1; echo \"@@END\"\"-%s-$?@@\"\n", cmdline, tag))
	re := regexp.MustCompile(`@@END-` + tag + `-(\d+)@@`)
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		all := s.buf.String()[start:]
		if m := re.FindStringSubmatchIndex(all); m != nil {
			code, _ := strconv.Atoi(all[m[2]:m[3]])
			return strings.TrimSpace(all[:m[0]]), code
		}
	}
	return s.buf.String()[start:], -1
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	b, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
	}
	return string(b)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// breakUnit, when VMTEST_BREAK names what, adds a drop-in to iot-hsm.service that
// takes the mechanism under check away (the check must then fail) and restarts the
// service. It shows that a check can fail; never set in CI.
func (vm *VM) breakUnit(what, dropin string) {
	vm.t.Helper()
	if !strings.Contains(","+os.Getenv("VMTEST_BREAK")+",", ","+what+",") {
		return
	}
	vm.t.Logf("VMTEST_BREAK=%s: iot-hsm.service with %q", what, dropin)
	vm.Sh("mkdir -p /etc/systemd/system/iot-hsm.service.d && printf '[Service]\\n" + dropin +
		"\\n' > /etc/systemd/system/iot-hsm.service.d/99-break.conf && systemctl daemon-reload && systemctl restart iot-hsm")
	vm.t.Cleanup(func() {
		vm.Try("rm -f /etc/systemd/system/iot-hsm.service.d/99-break.conf && systemctl daemon-reload")
	})
}
