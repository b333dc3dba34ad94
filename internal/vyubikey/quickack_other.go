//go:build !linux

package vyubikey

import "net"

func quickAcker(net.Conn) func() { return func() {} }
