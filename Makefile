# iot-hsm build, test and demo. `make test` on a fresh Debian machine installs what the
# tests need (make deps) and runs every test with the race detector.

GO        ?= go
BIN       ?= bin/iot-hsm
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS   := -X main.version=$(VERSION)
STATICCHECK_VERSION := v0.7.0

# Debian packages the tests use: SoftHSM2 (the PKCS#11 token), OpenSC's pkcs11-tool
# (to read the token as another program would), openssl (to verify what we issue),
# mosquitto (the tests start their own brokers; the service is not needed), pcscd with
# vsmartcard's virtual readers and the pcsc-lite headers (the YubiKey path; the tests
# plug a virtual YubiKey into vpcd), yubico-piv-tool (a second client of that card),
# systemd (systemd-analyze verifies the unit file), rauc with squashfs-tools (builds its
# bundles) and dbus-daemon (the OTA test runs rauc on a private bus), pkgconf (cgo
# finds libpcsclite through pkg-config), chromium (the web dashboard's browser test
# drives it headless). testtools_test.go
# fails when a test runs a program from a package not listed here.
DEB_PACKAGES := softhsm2 opensc openssl mosquitto pcscd vsmartcard-vpcd libpcsclite-dev yubico-piv-tool systemd \
	rauc squashfs-tools dbus-daemon pkgconf chromium

.PHONY: build test lint deps demo clean pcscd screenshots

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) .

# Installs only what is missing; apt-get update runs only when something is.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# pcscd is shared by every test binary, so it is started here, not by the tests.
pcscd:
	@pgrep -x pcscd >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO mkdir -p /run/pcscd && $$SUDO pcscd && echo "started pcscd"; \
		for i in $$(seq 50); do [ -S /run/pcscd/pcscd.comm ] && break; sleep 0.1; done; }

test: deps pcscd
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

# The screenshots in docs/web/, taken by the dashboard's browser test.
screenshots: deps pcscd
	WEB_SCREENSHOTS=1 $(GO) test -count=1 -run TestDashboardInChromium ./internal/browsertest/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# The provisioning workflow through the console against the daemon in development mode (--dev).
demo: deps build
	BIN=$(BIN) bash scripts/demo.sh

# Benchmarks (bench/): the token's own signing speed, the same through the
# appliance and mosquitto, the original IoT-HSM's openssl-per-certificate way, memory, start-up and
# binary size, and smallstep's step-ca with its key on SoftHSM2 as a peer; writes
# bench/RESULTS.md and bench/results.json in about five minutes. BEFORE=an earlier
# results.json (BEFORE_LABEL says what it was) adds a before-and-after section.
# What it runs against is installed as deps installs (only when missing), including the
# PKCS#11 engine for openssl that deps leaves out.
# step-ca, the peer of section 6, is installed from the Go module proxy at a pinned
# version into its own directory under bin/ (once per version; nothing of it is committed).
STEPCA_VERSION := v0.30.2
STEPCA         := bin/step-ca-$(STEPCA_VERSION)/step-ca
.PHONY: bench
bench: build pcscd $(STEPCA)
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="softhsm2 mosquitto openssl libengine-pkcs11-openssl pcscd vsmartcard-vpcd"
	$(GO) run ./bench -bin $(BIN) -step-ca $(STEPCA) -out bench $(if $(BEFORE),-before $(BEFORE) -before-label '$(BEFORE_LABEL)')

$(STEPCA):
	GOBIN=$(CURDIR)/$(dir $(STEPCA)) CGO_ENABLED=1 $(GO) install github.com/smallstep/certificates/cmd/step-ca@$(STEPCA_VERSION)

clean:
	rm -rf bin

# Static ARM binaries and the appliance image (docs/cross-and-image.md). cross:
# bin/iot-hsm-linux-arm64 and bin/iot-hsm-linux-armv7, static cgo builds
# with Debian's cross compilers and a static pcsc-lite built once from Debian's source
# package (cross/build/); installs what is missing. cross-test: both binaries under
# qemu-user, unit tests through `go test -exec`, and the arm64 daemon on Debian's arm64
# SoftHSM2 module driven by this machine's console. buildroot-check: what the
# BR2_EXTERNAL tree in buildroot/ can prove without Buildroot.
.PHONY: cross cross-deps cross-test cross-clean buildroot-check
cross:
	VERSION=$(VERSION) GO=$(GO) bash cross/cross.sh build

cross-deps:
	bash cross/cross.sh deps

cross-test: build cross
	HOST_BIN=$(BIN) GO=$(GO) bash cross/cross-test.sh

cross-clean:
	rm -rf cross/build bin/iot-hsm-linux-arm64 bin/iot-hsm-linux-armv7

buildroot-check: build
	HOST_BIN=$(BIN) bash buildroot/check.sh

# Fuzz targets, each run for a bounded number of executions one after the other;
# the corpora kept in testdata/fuzz/ also run as ordinary tests under `make test`.
# A finding is written to testdata/fuzz/<Target>/ and fails the run. The budget is
# a count, not a duration: Go 1.26's fuzz coordinator can report its own duration
# deadline as a failure ("context deadline exceeded") when a loaded machine is
# mid-execution at that moment; a count has no deadline to race.
FUZZTIME ?= 100000x
FUZZ_TARGETS := \
	./protocol:FuzzDecodeRequest ./protocol:FuzzDecodeArgs ./auth:FuzzVerify \
	./ca:FuzzParsePEM ./ca:FuzzProvisioningCert ./ca:FuzzIssueCertificate ./ca:FuzzSignTBS \
	./device/hotplug:FuzzParseUEvent ./hsm/pemkey:FuzzParse
.PHONY: fuzz
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		echo "fuzz $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# The appliance image from Debian's packages (image/build.sh, docs/image.md) and the
# test that boots it in QEMU (internal/vmtest). vm-deps installs what they use:
# mmdebstrap (the root filesystem), e2fsprogs, dosfstools, mtools and fdisk (the file
# systems and the disk, without loop devices), grub-efi-amd64-bin (GRUB on the EFI
# system partition), rauc and squashfs-tools (bundles), openssl (test keys), and
# qemu-system-x86, qemu-utils and ovmf (UEFI) to boot it. The image is rebuilt only
# when the recipe or the binary changed; the binary is built without VCS stamps so
# a commit that changes no code keeps the cached image.
ARCH       ?= amd64
# FLAVOR=raspi (with ARCH=arm64): the Raspberry Pi 3/4 image, Pi firmware and U-Boot.
FLAVOR     ?= efi
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VM_VERSION ?= v1.0.0
IMAGE_OUT  ?= image/build/$(ARCH)$(if $(filter raspi,$(FLAVOR)),-raspi)
VM_PACKAGES := mmdebstrap e2fsprogs dosfstools mtools fdisk grub-efi-amd64-bin grub-common rauc \
	squashfs-tools openssl qemu-system-x86 qemu-utils ovmf
# ARCH=arm64 on this amd64 machine also needs: qemu-user-static with binfmt-support
# and arch-test (mmdebstrap runs the arm64 packages' scripts under qemu-user),
# qemu-system-arm (qemu-system-aarch64) and qemu-efi-aarch64 (AAVMF, UEFI) to boot it.
# GRUB's arm64-efi modules come from grub-efi-arm64-bin inside the image's tree.
VM_PACKAGES_arm64 := qemu-user-static binfmt-support arch-test qemu-system-arm qemu-efi-aarch64
# FLAVOR=raspi: mkimage (u-boot-tools) makes U-Boot's boot script.
VM_PACKAGES_raspi := u-boot-tools
.PHONY: vm-deps image image-test vm-test
vm-deps:
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="$(VM_PACKAGES) $(VM_PACKAGES_$(ARCH)) $(VM_PACKAGES_$(FLAVOR))"

# The image's binary: for amd64 this machine's own (dynamic, Debian 12's glibc like
# the image); for arm64 make cross's static cgo build: without cgo neither PKCS#11
# (miekg/pkcs11) nor the YubiKey's PC/SC client (piv-go) compiles.
image/build/iot-hsm-$(ARCH): FORCE
	@mkdir -p image/build
ifeq ($(ARCH),amd64)
	$(GO) build -trimpath -buildvcs=false -ldflags '-X main.version=$(VM_VERSION)' -o $@ .
else
	GOFLAGS=-buildvcs=false CROSS_ARCHES=$(ARCH) BIN_DIR=$(CURDIR)/image/build/cross VERSION=$(VM_VERSION) \
		GO=$(GO) bash cross/cross.sh build
	cp image/build/cross/iot-hsm-linux-$(ARCH) $@
endif

image: vm-deps image/build/iot-hsm-$(ARCH)
	$(SUDO) env BIN=image/build/iot-hsm-$(ARCH) OUT=$(IMAGE_OUT) ARCH=$(ARCH) FLAVOR=$(FLAVOR) bash image/build.sh

image-test: vm-deps image/build/iot-hsm-$(ARCH)
	$(SUDO) env TEST=1 BIN=image/build/iot-hsm-$(ARCH) OUT=$(IMAGE_OUT)-test ARCH=$(ARCH) FLAVOR=$(FLAVOR) bash image/build.sh

# VM_TESTS: the tests of internal/vmtest that run (each boots its own machine).
# ARCH=arm64 boots the arm64 image in qemu-system-aarch64 (IOT_HSM_VM_ARCH); under
# TCG it takes too long for CI, so .ci/run builds and boots amd64 only.
# FLAVOR=raspi boots the Pi image in QEMU's raspi3b instead (TestRaspberryPi).
VM_TESTS ?= $(if $(filter raspi,$(FLAVOR)),TestRaspberryPi,TestSystemd|TestLEDs|TestHotplug|TestOTA)
vm-test: image-test
	VMTEST_BREAK=$(VMTEST_BREAK) IOT_HSM_VM_ARCH=$(ARCH) IOT_HSM_VM_FLAVOR=$(FLAVOR) IOT_HSM_VM_IMAGE=$(CURDIR)/$(IMAGE_OUT)-test $(GO) test -count=1 -timeout 80m -v -run '^($(VM_TESTS))$$' ./internal/vmtest/

.PHONY: FORCE
FORCE:
