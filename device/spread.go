package device

import "github.com/iot-hsm/iot-hsm/store"

// leastBusy picks, among slots holding the same CA key on present tokens, the one
// whose token has the fewest requests queued or running: a CA key imported into two tokens signs
// on both at once, each token one request at a time.
func (d *Device) leastBusy(slots []store.Slot) store.Slot {
	d.mu.Lock()
	defer d.mu.Unlock()
	best, bestLen := slots[0], -1
	for _, s := range slots {
		n := 0
		if w := d.workers[s.HSM]; w != nil {
			n = int(w.load.Load())
		}
		if bestLen < 0 || n < bestLen {
			best, bestLen = s, n
		}
	}
	return best
}
