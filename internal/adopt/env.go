package adopt

import (
	"errors"
	"strconv"
	"strings"
)

// Env is the EnvFD entry for a worker whose socket is fd n.
func Env(n int, unlink bool) string {
	v := EnvFD + "=" + strconv.Itoa(n)
	if unlink {
		v += ",unlink"
	}
	return v
}

// ParseEnv reads EnvFD's value: the socket's fd and whether unlink calls
// are sent to the primary too.
func ParseEnv(v string) (fd int, unlink bool, err error) {
	num, opts, _ := strings.Cut(v, ",")
	fd, err = strconv.Atoi(num)
	if err != nil || fd < 3 || (opts != "" && opts != "unlink") {
		return -1, false, errors.New("bad " + EnvFD + "=" + v)
	}
	return fd, opts == "unlink", nil
}
