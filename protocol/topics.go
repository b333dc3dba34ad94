package protocol

import "strings"

// Topics of one device under a root.
type Topics struct {
	Root   string
	Device string
}

func (t Topics) Status() string            { return t.Root + "/" + t.Device + "/status" }
func (t Topics) Events() string            { return t.Root + "/" + t.Device + "/events" }
func (t Topics) Reply() string             { return t.Root + "/" + t.Device + "/reply" }
func (t Topics) Cmd(command string) string { return t.Root + "/" + t.Device + "/cmd/" + command }
func (t Topics) CmdFilter() string         { return t.Root + "/" + t.Device + "/cmd/+" }

// CASign is the signing topic of a CA key, shared by every device holding that key.
func (t Topics) CASign(caID string) string { return t.Root + "/ca/" + caID + "/sign" }

// CASignShared is the shared-subscription filter for CASign: the broker hands each
// request to one of the devices in the group.
func (t Topics) CASignShared(caID string) string {
	return "$share/" + t.Root + "/" + t.CASign(caID)
}

// StatusFilter matches the status topics of every device under the root.
func StatusFilter(root string) string { return root + "/+/status" }

// ParseCmdTopic returns the command of a <root>/<dev>/cmd/<command> topic.
func (t Topics) ParseCmdTopic(topic string) (string, bool) {
	return strings.CutPrefix(topic, t.Root+"/"+t.Device+"/cmd/")
}

// ParseCASignTopic returns the ca_id of a <root>/ca/<ca-id>/sign topic.
func (t Topics) ParseCASignTopic(topic string) (string, bool) {
	rest, ok := strings.CutPrefix(topic, t.Root+"/ca/")
	if !ok {
		return "", false
	}
	caID, ok := strings.CutSuffix(rest, "/sign")
	return caID, ok && caID != "" && !strings.Contains(caID, "/")
}
