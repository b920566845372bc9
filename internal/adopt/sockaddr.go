package adopt

import (
	"bytes"
	"encoding/binary"
	"net/netip"
)

// Address families as Linux numbers them (struct sockaddr's sa_family).
const (
	afUnix  = 1
	afInet  = 2
	afInet6 = 10
)

// maxSockaddr is sizeof(struct sockaddr_storage): no bind reads more.
const maxSockaddr = 128

// parseSockaddr reads a struct sockaddr of addrlen bytes as Linux lays it
// out (sa_family in host byte order, port and address in network order).
// ok is false for another family, a short address, or an unnamed unix
// address (autobind).
func parseSockaddr(b []byte) (a Addr, ok bool) {
	if len(b) < 2 {
		return a, false
	}
	switch binary.NativeEndian.Uint16(b) {
	case afInet: // sockaddr_in: family, port, 4-byte address, padding
		if len(b) < 8 {
			return a, false
		}
		a.Port = int(binary.BigEndian.Uint16(b[2:]))
		a.IP = netip.AddrFrom4([4]byte(b[4:8]))
		return a, true
	case afInet6: // sockaddr_in6: family, port, flowinfo, 16-byte address, scope id
		if len(b) < 24 {
			return a, false
		}
		a.Port = int(binary.BigEndian.Uint16(b[2:]))
		a.IP = netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		return a, true
	case afUnix: // sockaddr_un: family, path (NUL-terminated, or abstract: NUL then name)
		path := b[2:]
		if len(path) == 0 {
			return a, false
		}
		a.Unix = true
		if path[0] == 0 {
			a.Abstract, a.Path = true, string(path[1:])
			return a, true
		}
		if i := bytes.IndexByte(path, 0); i >= 0 {
			path = path[:i]
		}
		a.Path = string(path)
		return a, true
	}
	return a, false
}
