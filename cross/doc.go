// Package cross holds no code of the appliance: its directory has the scripts of
// `make cross` and `make cross-test` (static ARM binaries, docs/cross-and-image.md),
// and its tests check, without Buildroot, what the BR2_EXTERNAL tree
// in ../buildroot ships: the image's configuration parses, the defconfigs name files
// that exist, and the overlay's units and presets agree.
package cross
