package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// toolPackages maps each program the tests run to the Debian package that ships it.
// A table, not `dpkg -S` alone: on a fresh machine the program is not installed yet,
// and that is exactly when the package must be known. Where the program is installed,
// the test checks each entry against dpkg.
var toolPackages = map[string]string{
	"openssl":         "openssl",
	"softhsm2-util":   "softhsm2",
	"pkcs11-tool":     "opensc",
	"mosquitto":       "mosquitto",
	"pcscd":           "pcscd",
	"yubico-piv-tool": "yubico-piv-tool",
	"systemd-analyze": "systemd",
	"rauc":            "rauc",
	"mksquashfs":      "squashfs-tools",
	"dbus-daemon":     "dbus-daemon",
	"pkg-config":      "pkgconf",
	"chromium":        "chromium",
	// The VM test's, installed by make vm-deps (VM_PACKAGES).
	"qemu-img":            "qemu-utils",
	"qemu-system-x86_64":  "qemu-system-x86",
	"qemu-system-aarch64": "qemu-system-arm",
	"mcopy":               "mtools",
	"mkimage":             "u-boot-tools",
}

// baseTools are in every Debian base system (their packages are Priority: required,
// which the test checks), so make deps need not install them.
var baseTools = map[string]string{
	"sh":       "dash",
	"bash":     "bash",
	"cat":      "coreutils",
	"cp":       "coreutils",
	"echo":     "coreutils",
	"truncate": "coreutils",
	"mount":    "mount",
	"nice":     "coreutils",
	"umount":   "mount",
	// This test's own means of checking.
	"dpkg":       "dpkg",
	"dpkg-query": "dpkg",
}

// goTools come with Go itself.
var goTools = map[string]bool{"go": true}

// dynamicTools are run by tests under names the source scan cannot see: the RAUC
// test's reboot_command (run by the daemon) and its bootloader backend script (run
// by rauc) use sh, cat and echo; `rauc bundle` runs mksquashfs; and the go tool runs
// pkg-config to build the cgo packages whose `#cgo pkg-config:` lines name
// libpcsclite (piv-go, device/hotplug); the browser test's CDP library starts
// chromium.
var dynamicTools = []string{"sh", "cat", "echo", "mksquashfs", "pkg-config", "chromium"}

// vmTestDir holds the tests of the booted image: `make vm-test` runs them after
// `make vm-deps`, so their programs come from VM_PACKAGES.
const vmTestDir = "internal/vmtest"

// Every program a test runs must come from a package `make deps` installs, so that
// `make test` works on a fresh machine.
func TestMakeDepsInstallsEveryTestTool(t *testing.T) {
	tools := unique(append(scanTools(t, ".", vmTestDir), dynamicTools...))
	t.Logf("programs the tests run: %v", tools)
	checkTools(t, tools, makefileList(t, "DEB_PACKAGES"), "DEB_PACKAGES (make deps)")
	if len(tools) < 8 {
		t.Fatalf("found only %d programs (%v): the source scan is broken", len(tools), tools)
	}
}

// vmExtraTools are run only for one architecture or flavour of the image, and come
// from its own list as well as VM_PACKAGES: arm64's emulator, the Pi's mkimage.
var vmExtraTools = map[string]string{
	"qemu-system-aarch64": "VM_PACKAGES_arm64",
	"mkimage":             "VM_PACKAGES_raspi",
}

// The same for the VM test and `make vm-deps`; it starts QEMU through nice, the
// emulator of the image's architecture.
func TestMakeVMDepsInstallsEveryVMTestTool(t *testing.T) {
	tools := unique(append(scanTools(t, vmTestDir), "qemu-system-x86_64", "qemu-system-aarch64"))
	t.Logf("programs the VM test runs: %v", tools)
	var common []string
	for _, tool := range tools {
		if vmExtraTools[tool] == "" {
			common = append(common, tool)
		}
	}
	if len(common) < 2 {
		t.Fatalf("found only %d programs (%v): the source scan is broken", len(common), common)
	}
	checkTools(t, common, makefileList(t, "VM_PACKAGES"), "VM_PACKAGES (make vm-deps)")
	for tool, list := range vmExtraTools {
		if !slices.Contains(tools, tool) {
			continue
		}
		debs := makefileList(t, "VM_PACKAGES")
		for p := range makefileList(t, list) {
			debs[p] = true
		}
		checkTools(t, []string{tool}, debs, list+" (make vm-deps)")
	}
}

// checkTools checks that each tool is Go's, in every base system, or in debs.
func checkTools(t *testing.T, tools []string, debs map[string]bool, list string) {
	t.Helper()
	owners := dpkgOwners(t, tools)
	for _, tool := range tools {
		switch {
		case goTools[tool]:
		case baseTools[tool] != "":
			checkBase(t, owners, tool, baseTools[tool])
		case toolPackages[tool] == "":
			t.Errorf("the tests run %s, which is not in toolPackages: add it with the Debian package that ships it", tool)
		case !debs[toolPackages[tool]]:
			t.Errorf("the tests run %s from Debian package %s, which the Makefile's %s does not install", tool, toolPackages[tool], list)
		default:
			checkPackage(t, owners, tool, toolPackages[tool])
		}
	}
}

func unique(names []string) []string {
	sort.Strings(names)
	var out []string
	for i, n := range names {
		if i == 0 || n != names[i-1] {
			out = append(out, n)
		}
	}
	return out
}

// makefileList reads a list of Debian packages (DEB_PACKAGES, VM_PACKAGES) from the
// Makefile.
func makefileList(t *testing.T, name string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("Makefile")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	m := regexp.MustCompile(`(?m)^` + name + `\s*:?=(.*)$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no %s in the Makefile", name)
	}
	debs := map[string]bool{}
	for _, p := range strings.Fields(m[1]) {
		debs[p] = true
	}
	return debs
}

// checkPackage checks the table against dpkg where the program is installed.
func checkPackage(t *testing.T, owners map[string]string, tool, want string) {
	t.Helper()
	if got, ok := owners[tool]; ok && got != want {
		t.Errorf("the table says %s comes from %s, dpkg says %s", tool, want, got)
	}
}

// checkBase checks that a program left out of make deps comes from a package every
// Debian system has.
func checkBase(t *testing.T, owners map[string]string, tool, want string) {
	t.Helper()
	checkPackage(t, owners, tool, want)
	out, err := exec.Command("dpkg-query", "-W", "-f=${Essential} ${Priority}", want).Output()
	if err != nil {
		return // not a Debian system: the table is all there is
	}
	if f := strings.Fields(string(out)); len(f) != 2 || (f[0] != "yes" && f[1] != "required") {
		t.Errorf("%s comes from %s, which is not in every Debian base system (%q): add it to toolPackages and DEB_PACKAGES", tool, want, out)
	}
}

// dpkgOwners asks dpkg which package ships each installed program. A program or
// dpkg that is not installed is left out.
func dpkgOwners(t *testing.T, tools []string) map[string]string {
	owners := map[string]string{}
	if _, err := exec.LookPath("dpkg"); err != nil {
		return owners
	}
	byPath := map[string]string{}
	linked := map[string]bool{} // paths reached through a symlink
	for _, tool := range tools {
		where, err := exec.LookPath(tool)
		if err != nil {
			if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
				continue
			}
			where = "/usr/sbin/" + tool
		}
		byPath[where] = tool
		if real, err := filepath.EvalSymlinks(where); err == nil && real != where {
			byPath[real] = tool
			linked[real] = true
		}
	}
	// With merged /usr, dpkg knows some programs by their /bin or /sbin path.
	for p, tool := range byPath {
		if rest, ok := strings.CutPrefix(p, "/usr"); ok {
			byPath[rest] = tool
		}
	}
	args := []string{"-S"}
	for p := range byPath {
		args = append(args, p)
	}
	// dpkg -S is slow, so one call; it prints what it finds even when it fails for
	// some of the paths. A diverted file (/bin/sh) also gets "diversion by" lines.
	out, _ := exec.Command("dpkg", args...).Output()
	pathOwner := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		pkg, p, ok := strings.Cut(line, ": ")
		if ok && !strings.HasPrefix(pkg, "diversion by") && byPath[p] != "" {
			pkg, _, _ = strings.Cut(pkg, ":") // pkgconf:amd64
			pathOwner[p] = pkg
		}
	}
	// The package that ships the name the tests run wins over the one that ships
	// what a symlink points to (pkg-config is pkgconf's link to pkgconf-bin's pkgconf).
	for p, pkg := range pathOwner {
		if !linked[p] {
			owners[byPath[p]] = pkg
		}
	}
	for p, pkg := range pathOwner {
		if _, named := owners[byPath[p]]; !named {
			owners[byPath[p]] = pkg
		}
	}
	for _, tool := range tools {
		if _, ok := owners[tool]; !ok && !goTools[tool] {
			t.Logf("dpkg does not know %s: the table is not checked for it", tool)
		}
	}
	return owners
}

// scanTools parses every Go file below root (bench/ aside: make bench installs its
// own; skip aside too) and returns the base names of the programs passed to
// exec.Command, exec.CommandContext and exec.LookPath: string literals, package
// constants, and literals passed to helpers that hand a parameter on to one of them.
func scanTools(t *testing.T, root string, skip ...string) []string {
	t.Helper()
	pkgs := map[string][]*ast.File{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (p == "bench" || p == "cross" || slices.Contains(skip, p) || strings.HasPrefix(d.Name(), ".")) && p != "." && p != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return err
		}
		key := filepath.Dir(p) + ":" + f.Name.Name
		pkgs[key] = append(pkgs[key], f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &toolScan{wrappers: map[string]wrapper{}}
	for _, files := range pkgs {
		s.scanPackage(files)
	}
	for _, files := range pkgs {
		s.scanWrapperCalls(files)
	}
	return s.tools
}

type toolScan struct {
	tools []string
	// wrappers by "package.Func": helpers whose parameter reaches exec.
	wrappers map[string]wrapper
}

type wrapper struct {
	index    int
	variadic bool
}

func (s *toolScan) add(name string) { s.tools = append(s.tools, path.Base(name)) }

// scanPackage collects the programs named directly and records the wrappers.
func (s *toolScan) scanPackage(files []*ast.File) {
	consts := map[string]string{}
	for _, f := range files {
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if i < len(vs.Values) {
						if v, ok := stringLit(vs.Values[i]); ok {
							consts[n.Name] = v
						}
					}
				}
			}
		}
	}
	for _, f := range files {
		for _, decl := range f.Decls {
			if fd, ok := decl.(*ast.FuncDecl); ok && fd.Body != nil {
				s.scanFunc(f.Name.Name, fd, consts)
			}
		}
	}
}

func (s *toolScan) scanFunc(pkg string, fd *ast.FuncDecl, consts map[string]string) {
	params := paramIndex(fd)
	ast.Inspect(fd.Body, func(n ast.Node) bool {
		arg, ok := execProgram(n)
		if !ok {
			return true
		}
		if v, ok := stringLit(arg); ok {
			s.add(v)
			return true
		}
		id, ok := arg.(*ast.Ident)
		if !ok {
			return true
		}
		if v, ok := consts[id.Name]; ok {
			s.add(v)
			return true
		}
		if name := rangedOver(id); name != "" {
			id = &ast.Ident{Name: name}
		}
		if w, ok := params[id.Name]; ok && fd.Recv == nil {
			s.wrappers[pkg+"."+fd.Name.Name] = w
		}
		return true
	})
}

// paramIndex gives each parameter's position, and whether it is the variadic one.
func paramIndex(fd *ast.FuncDecl) map[string]wrapper {
	params := map[string]wrapper{}
	i := 0
	for _, field := range fd.Type.Params.List {
		_, variadic := field.Type.(*ast.Ellipsis)
		for _, n := range field.Names {
			params[n.Name] = wrapper{index: i, variadic: variadic}
			i++
		}
		if len(field.Names) == 0 {
			i++
		}
	}
	return params
}

// rangedOver returns the name of the slice id ranges over (`for _, id := range x`);
// the parser records such a declaration as an assignment from a range expression.
func rangedOver(id *ast.Ident) string {
	if id.Obj == nil {
		return ""
	}
	as, ok := id.Obj.Decl.(*ast.AssignStmt)
	if !ok || len(as.Rhs) != 1 {
		return ""
	}
	if u, ok := as.Rhs[0].(*ast.UnaryExpr); ok && u.Op == token.RANGE {
		if x, ok := u.X.(*ast.Ident); ok {
			return x.Name
		}
	}
	return ""
}

// scanWrapperCalls collects the literals passed to the wrappers.
func (s *toolScan) scanWrapperCalls(files []*ast.File) {
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			var key string
			switch fn := call.Fun.(type) {
			case *ast.Ident:
				key = f.Name.Name + "." + fn.Name
			case *ast.SelectorExpr:
				if x, ok := fn.X.(*ast.Ident); ok {
					key = x.Name + "." + fn.Sel.Name
				}
			}
			w, ok := s.wrappers[key]
			if !ok {
				return true
			}
			for i := w.index; i < len(call.Args) && (i == w.index || w.variadic); i++ {
				if v, ok := stringLit(call.Args[i]); ok {
					s.add(v)
				}
			}
			return true
		})
	}
}

// execProgram returns the program argument of an exec.Command, exec.CommandContext
// or exec.LookPath call.
func execProgram(n ast.Node) (ast.Expr, bool) {
	call, ok := n.(*ast.CallExpr)
	if !ok {
		return nil, false
	}
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return nil, false
	}
	if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "exec" {
		return nil, false
	}
	switch {
	case (sel.Sel.Name == "Command" || sel.Sel.Name == "LookPath") && len(call.Args) > 0:
		return call.Args[0], true
	case sel.Sel.Name == "CommandContext" && len(call.Args) > 1:
		return call.Args[1], true
	}
	return nil, false
}

func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	v, err := strconv.Unquote(lit.Value)
	return v, err == nil
}
