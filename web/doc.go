// Package web is the appliance's dashboard: server-rendered pages over HTTPS, with
// a login, sessions, CSRF tokens and a rate-limited password check. Every action is
// a device command run through device.Device.Exec, the intake MQTT requests take, so
// the dashboard has no command logic of its own. Live updates (presence, slot
// states, an update's progress) reach the page as server-sent events.
package web
