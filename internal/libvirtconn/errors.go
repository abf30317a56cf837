package libvirtconn

import (
	"errors"

	"github.com/digitalocean/go-libvirt"
)

// IsCode says whether err is (or wraps) libvirt's error of the given code,
// such as libvirt.ErrNoDomain.
func IsCode(err error, code libvirt.ErrorNumber) bool {
	var lverr libvirt.Error
	return errors.As(err, &lverr) && lverr.Code == uint32(code)
}

// Message returns libvirt's own message for err when it is (or wraps)
// libvirt's error, and err's message otherwise: what an API answer says.
func Message(err error) string {
	var lverr libvirt.Error
	if errors.As(err, &lverr) {
		return lverr.Message
	}
	return err.Error()
}
