package mqtt

import (
	"bytes"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// copyStore is paho's memory store holding copies of the packets. paho's own memory
// store keeps the very packet being written to the network; when a reconnect resumes
// the session, paho sets the DUP flag on that stored packet while the writer may
// still be encoding it (a data race the race detector reports). With copies, the
// packet on the wire and the one resumed are different objects.
type copyStore struct {
	*paho.MemoryStore
}

func newCopyStore() *copyStore { return &copyStore{paho.NewMemoryStore()} }

func (s *copyStore) Put(key string, m packets.ControlPacket) {
	s.MemoryStore.Put(key, clonePacket(m))
}

func (s *copyStore) Get(key string) packets.ControlPacket {
	return clonePacket(s.MemoryStore.Get(key))
}

// clonePacket copies a packet by encoding and decoding it, the only copy paho's
// packet types offer.
func clonePacket(m packets.ControlPacket) packets.ControlPacket {
	if m == nil {
		return nil
	}
	var buf bytes.Buffer
	if err := m.Write(&buf); err != nil {
		return m
	}
	c, err := packets.ReadPacket(&buf)
	if err != nil {
		return m
	}
	return c
}
