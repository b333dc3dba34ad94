################################################################################
#
# iot-hsm
#
################################################################################

# Built from the repository this BR2_EXTERNAL tree lives in (its parent directory),
# with Buildroot's golang-package infrastructure and the image's own toolchain: the
# binary, pcsc-lite's client and every PKCS#11 module of the image (softhsm2, opensc)
# use the same C library. The version is the checkout's, so a new commit rebuilds.
IOT_HSM_VERSION = $(shell git -C $(BR2_EXTERNAL_IOT_HSM_PATH) describe --tags --always --dirty 2>/dev/null || echo local)
IOT_HSM_SITE = $(realpath $(BR2_EXTERNAL_IOT_HSM_PATH)/..)
IOT_HSM_SITE_METHOD = local
IOT_HSM_GOMOD = github.com/iot-hsm/iot-hsm
# piv-go links the pcsc-lite client through pkg-config; miekg/pkcs11 needs dlopen.
IOT_HSM_DEPENDENCIES = host-pkgconf pcsc-lite
IOT_HSM_LDFLAGS = -X main.version=$(IOT_HSM_VERSION)
# Go's own DNS and user lookups, as in `make cross`.
IOT_HSM_TAGS = netgo osusergo

# Build outputs of the checkout are not sources.
IOT_HSM_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude=/bin/ --exclude=/cross/build/ --exclude=/demo-out/ \
	--exclude=/iot-hsm-dev/ --exclude=/output/

ifeq ($(BR2_PACKAGE_IOT_HSM_STATIC),y)
IOT_HSM_EXTLDFLAGS += -static
endif

# The golang infrastructure vendors the modules in its download step, which a local
# source skips: vendor once rsynced, through the Go module proxy (GOPROXY from the
# environment, else Go's default). A checkout that has vendor/ is used as it is.
IOT_HSM_GOPROXY = $(if $(GOPROXY),$(GOPROXY),https://proxy.golang.org$(comma)direct)
define IOT_HSM_VENDOR
	if [ ! -d $(@D)/vendor ]; then \
		cd $(@D) && $(HOST_GO_COMMON_ENV) GOFLAGS=-mod=mod GOPROXY="$(IOT_HSM_GOPROXY)" \
			$(GO_BIN) mod vendor; \
	fi
endef
IOT_HSM_PRE_CONFIGURE_HOOKS += IOT_HSM_VENDOR

# The service's user (board/iot-hsm/.../iot-hsm.service.d/10-appliance.conf sets
# User=iot-hsm): group gpio for the LEDs and GPIO lines (udev rules in the overlay).
define IOT_HSM_USERS
	iot-hsm -1 iot-hsm -1 * - - gpio iot-hsm appliance daemon
endef

# /etc/iot-hsm holds PIN and key files: readable by the service's group only.
define IOT_HSM_PERMISSIONS
	/etc/iot-hsm d 750 root iot-hsm - - - - -
	/etc/iot-hsm/config.toml f 640 root iot-hsm - - - - -
	/var/lib/iot-hsm d 700 iot-hsm iot-hsm - - - - -
endef

$(eval $(golang-package))
