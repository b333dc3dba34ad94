package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// sizeRows builds the stripped linux/amd64 binary, and the ARM binaries with
// `make cross` (cross/cross.sh writes bin/iot-hsm-linux-<arch>, stripped).
func (b *bench) sizeRows() {
	amd := filepath.Join(b.work, "iot-hsm-linux-amd64")
	cmd := exec.Command(goTool(), "build", "-trimpath", "-ldflags", "-s -w", "-o", amd, ".")
	cmd.Dir = b.root
	cmd.Env = append(envWithout("GOOS", "GOARCH"), "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.sizeRow("linux/amd64", "", fmt.Sprintf("build failed: %v: %.300s", err, out))
	} else {
		b.sizeRow("linux/amd64", amd, `go build -trimpath -ldflags "-s -w" (cgo, dynamically linked)`)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	mc := exec.CommandContext(ctx, "make", "cross")
	mc.Dir = b.root
	out, err := mc.CombinedOutput()
	for _, arch := range []string{"arm64", "armv7"} {
		rel := filepath.Join("bin", "iot-hsm-linux-"+arch)
		if err != nil {
			b.sizeRow("linux/"+arch, "", fmt.Sprintf("make cross failed: %v: %.300s", err, out))
		} else {
			b.sizeRow("linux/"+arch, filepath.Join(b.root, rel), "from make cross: "+rel)
		}
	}
}

// sizeRow adds the size of the binary at path; "" is one that was not built. The
// arm64 one has a target.
func (b *bench) sizeRow(target, path, note string) {
	row := Row{Section: secSize, Name: target, Unit: "MiB", Note: note}
	fi, err := os.Stat(path)
	if path != "" && err != nil {
		row.Note = err.Error()
	}
	if path != "" && err == nil {
		row.Value = val(float64(fi.Size()) / (1 << 20))
		row.Metrics = map[string]float64{"bytes": float64(fi.Size())}
	}
	if target == "linux/arm64" {
		row.Target, row.Status = "≤ 25 MiB stripped", statusNotBuilt
		if row.Value != nil {
			row.Status = verdict(*row.Value <= 25)
		}
	}
	b.rows = append(b.rows, row)
}
