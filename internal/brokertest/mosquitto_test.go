package brokertest

import (
	"net"
	"strconv"
	"testing"
	"time"
)

func accepts(port int) bool {
	conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

func TestMosquittoStopStart(t *testing.T) {
	m := StartMosquitto(t)
	if m.URL != "tcp://127.0.0.1:"+strconv.Itoa(m.Port) {
		t.Fatalf("URL %q does not match port %d", m.URL, m.Port)
	}
	if !accepts(m.Port) {
		t.Fatal("not accepting after StartMosquitto")
	}
	m.Stop()
	if accepts(m.Port) {
		t.Fatal("still accepting after Stop")
	}
	m.Stop() // a second Stop is harmless
	m.Start(t)
	if !accepts(m.Port) {
		t.Fatal("not accepting after Start")
	}
}

func TestMosquittoExtraConf(t *testing.T) {
	extra := FreePort(t)
	m := StartMosquitto(t, "listener "+strconv.Itoa(extra)+" 127.0.0.1")
	if !accepts(m.Port) || !accepts(extra) {
		t.Fatal("both listeners should accept")
	}
}
