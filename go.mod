module github.com/iot-hsm/iot-hsm

go 1.26
