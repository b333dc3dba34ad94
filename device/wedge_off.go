//go:build !wedgetest

package device

// wedgeForTest does nothing: production builds have no way to wedge a worker.
// wedge_on.go (build tag wedgetest) is the test build's.
func wedgeForTest(*job) {}
