package h2grpc

import (
	"strconv"
	"time"
)

// grpc-timeout changes with every call: it is written by hand as an HPACK
// literal without indexing (RFC 7541 6.2.2), which leaves the dynamic table
// (and the constant fields indexed there) alone.

// appendInt appends an HPACK integer with an n-bit prefix (RFC 7541 5.1);
// first holds the pattern bits above the prefix.
func appendInt(b []byte, first byte, n uint, v uint64) []byte {
	max := uint64(1)<<n - 1
	if v < max {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(max))
	for v -= max; v >= 128; v >>= 7 {
		b = append(b, byte(v)|0x80)
	}
	return append(b, byte(v))
}

// appendString appends a raw (not Huffman-coded) string literal.
func appendString(b []byte, s string) []byte {
	return append(appendInt(b, 0, 7, uint64(len(s))), s...)
}

// appendTimeoutField appends grpc-timeout: at most 8 digits and a unit,
// rounded up so the server never sees a shorter deadline than ours.
func appendTimeoutField(b []byte, d time.Duration) []byte {
	var v [16]byte
	t := encodeTimeout(v[:0], d)
	b = appendString(append(b, 0x00), "grpc-timeout")
	return append(appendInt(b, 0, 7, uint64(len(t))), t...)
}

func encodeTimeout(b []byte, d time.Duration) []byte {
	if d <= 0 {
		return append(b, "1n"...)
	}
	for _, u := range []struct {
		unit time.Duration
		c    byte
	}{{time.Nanosecond, 'n'}, {time.Microsecond, 'u'}, {time.Millisecond, 'm'}, {time.Second, 'S'}, {time.Minute, 'M'}} {
		if v := (d + u.unit - 1) / u.unit; v <= 99999999 {
			return append(strconv.AppendInt(b, int64(v), 10), u.c)
		}
	}
	v := min((d+time.Hour-1)/time.Hour, 99999999)
	return append(strconv.AppendInt(b, int64(v), 10), 'H')
}

// decodeGrpcMessage undoes grpc-message's percent-encoding (gRPC's HTTP/2
// protocol spec: bytes outside 0x20–0x7E and '%' are sent as %XX).
func decodeGrpcMessage(s string) string {
	i := 0
	for i < len(s) && s[i] != '%' {
		i++
	}
	if i == len(s) {
		return s
	}
	b := make([]byte, 0, len(s))
	for i = 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b = append(b, byte(v))
				i += 2
				continue
			}
		}
		b = append(b, s[i])
	}
	return string(b)
}
