package spool

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"
)

// Usage batch encoding, version 1. Integers are varints (signed ones
// zig-zag, encoding/binary's PutVarint) unless noted:
//
//	byte     format (batchFormat)
//	varint   CreatedAt, Unix nanoseconds
//	uvarint  number of records N
//	uvarint  number of distinct (tenant, meter) pairs P
//	P ×      uvarint len(tenant), tenant, uvarint len(meter), meter
//	N ×      uvarint pair index << 1 | integral flag
//	         integral: varint int64(Value)
//	         else:     8 bytes, little-endian IEEE 754 bits of Value
//	         varint   At.UnixNano() - CreatedAt.UnixNano() (wrapping)
//	4 bytes  CRC-32C (Castagnoli) of everything before it, big-endian
//
// A value is "integral" when it is an integer of magnitude at most 2^53 and
// not negative zero, so int64(v) converts back to exactly the same float64.
const batchFormat = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errCorrupt: a stored batch or snapshot cannot be decoded.
var errCorrupt = errors.New("corrupt")

type pair struct{ tenant, meter string }

// encodeBatch encodes records (already validated) created at created.
func encodeBatch(created int64, recs []Record) []byte {
	pairs := make([]pair, 0, 4)
	index := make(map[pair]uint64, 4)
	idx := make([]uint64, len(recs))
	size := 1 + binary.MaxVarintLen64*2 + 4
	for i, r := range recs {
		p := pair{r.Tenant, r.Meter}
		n, ok := index[p]
		if !ok {
			n = uint64(len(pairs))
			index[p] = n
			pairs = append(pairs, p)
			size += 2*binary.MaxVarintLen16 + len(p.tenant) + len(p.meter)
		}
		idx[i] = n
		size += 3 * binary.MaxVarintLen64
	}
	b := make([]byte, 0, size)
	b = append(b, batchFormat)
	b = binary.AppendVarint(b, created)
	b = binary.AppendUvarint(b, uint64(len(recs)))
	b = binary.AppendUvarint(b, uint64(len(pairs)))
	for _, p := range pairs {
		b = binary.AppendUvarint(b, uint64(len(p.tenant)))
		b = append(b, p.tenant...)
		b = binary.AppendUvarint(b, uint64(len(p.meter)))
		b = append(b, p.meter...)
	}
	for i, r := range recs {
		if integral(r.Value) {
			b = binary.AppendUvarint(b, idx[i]<<1|1)
			b = binary.AppendVarint(b, int64(r.Value))
		} else {
			b = binary.AppendUvarint(b, idx[i]<<1)
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(r.Value))
		}
		b = binary.AppendVarint(b, r.At.UnixNano()-created)
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func integral(v float64) bool {
	return v == math.Trunc(v) && math.Abs(v) <= 1<<53 && !(v == 0 && math.Signbit(v))
}

// batchHeader is what Open needs of a stored batch without decoding it.
type batchHeader struct {
	created int64
	records int
}

// reader decodes varints from a byte slice, remembering the first error.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: bad %s", errCorrupt, what)
	}
}

func (r *reader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint(what string) int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n uint64, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail(what)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

// parseHeader checks the batch's checksum and format and reads its header;
// the reader it returns is positioned at the pair table.
func parseHeader(b []byte) (batchHeader, *reader, error) {
	if len(b) < 1+4 {
		return batchHeader{}, nil, fmt.Errorf("%w: %d bytes", errCorrupt, len(b))
	}
	body := b[:len(b)-4]
	if got, want := crc32.Checksum(body, castagnoli), binary.BigEndian.Uint32(b[len(b)-4:]); got != want {
		return batchHeader{}, nil, fmt.Errorf("%w: checksum %08x, stored %08x", errCorrupt, got, want)
	}
	if body[0] != batchFormat {
		return batchHeader{}, nil, fmt.Errorf("batch format %d, this agent reads format %d (was it written by a newer agent?)", body[0], batchFormat)
	}
	r := &reader{b: body[1:]}
	h := batchHeader{created: r.varint("creation time")}
	n := r.uvarint("record count")
	if r.err == nil && n > uint64(len(r.b)) { // every record takes at least 2 bytes
		r.fail("record count")
	}
	h.records = int(n)
	return h, r, r.err
}

// decodeBatch decodes a stored batch. Strings are copied out of b (which
// bbolt owns), each pair's once.
func decodeBatch(seq uint64, b []byte) (Batch, error) {
	h, r, err := parseHeader(b)
	if err != nil {
		return Batch{}, err
	}
	np := r.uvarint("pair count")
	if r.err == nil && np > uint64(len(r.b)) {
		r.fail("pair count")
	}
	if r.err != nil {
		return Batch{}, r.err
	}
	pairs := make([]pair, np)
	for i := range pairs {
		pairs[i].tenant = string(r.bytes(r.uvarint("tenant length"), "tenant"))
		pairs[i].meter = string(r.bytes(r.uvarint("meter length"), "meter"))
	}
	recs := make([]Record, h.records)
	for i := range recs {
		tag := r.uvarint("pair index")
		if r.err == nil && tag>>1 >= np {
			r.fail("pair index")
		}
		if r.err != nil {
			return Batch{}, r.err
		}
		p := pairs[tag>>1]
		var v float64
		if tag&1 == 1 {
			v = float64(r.varint("value"))
		} else if vb := r.bytes(8, "value"); vb != nil {
			v = math.Float64frombits(binary.LittleEndian.Uint64(vb))
		}
		at := h.created + r.varint("time")
		if r.err != nil {
			return Batch{}, r.err
		}
		recs[i] = Record{Tenant: p.tenant, Meter: p.meter, Value: v, At: time.Unix(0, at).UTC()}
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("length (trailing bytes)")
	}
	if r.err != nil {
		return Batch{}, r.err
	}
	return Batch{Sequence: seq, Records: recs, CreatedAt: time.Unix(0, h.created).UTC()}, nil
}

// healthJSON is the stored form of a Health snapshot. Fields are only ever
// added, with omitempty, so snapshots written before them still decode (the
// drift fields "d" and "dd" came after the first release).
type healthJSON struct {
	At         time.Time       `json:"at"`
	Components []componentJSON `json:"c,omitempty"`
}

// componentJSON has Component's fields in Component's order (the two
// convert into each other).
type componentJSON struct {
	Name        string `json:"n"`
	Status      string `json:"s"`
	Message     string `json:"m,omitempty"`
	Tenant      string `json:"t,omitempty"`
	Drift       bool   `json:"d,omitempty"`
	DriftDetail string `json:"dd,omitempty"`
}

func encodeHealth(h Health) ([]byte, error) {
	v := healthJSON{At: h.At.UTC()}
	for _, c := range h.Components {
		v.Components = append(v.Components, componentJSON(c))
	}
	return json.Marshal(v)
}

func decodeHealth(b []byte) (Health, error) {
	var v healthJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return Health{}, fmt.Errorf("%w: %w", errCorrupt, err)
	}
	h := Health{At: v.At.UTC()}
	for _, c := range v.Components {
		h.Components = append(h.Components, Component(c))
	}
	return h, nil
}
