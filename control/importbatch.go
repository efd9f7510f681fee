package control

import "github.com/snare-dev/snare/backend"

// recChunk is how many records one chunk of an importBatch holds (1.5 MB).
const recChunk = 1 << 16

// maxImportLines bounds the lines of one import list whatever the capacity (32M). Every line
// takes a 24-byte slot while the list is read, comments and blank lines too.
const maxImportLines = 1 << 25

// importLineLimit is how many lines an import list may have: four times block.capacity (a list
// longer than the maps can hold is a mistake, and this bounds its slots to 96 MB for the
// default million), at least 1M, at most maxImportLines.
func importLineLimit(capacity int) int {
	return min(max(4*capacity, 1<<20), maxImportLines)
}

// importBatch holds an import's records, one slot per line of the list, in fixed chunks: it
// never copies what it holds to grow, and holds at most one part-filled chunk beyond the list.
// The chunks are a fixed array so that lines can be parsed into their slots on several
// goroutines while slots are made for the next ones (no slice header changes under them). A slot
// left zero (a comment, a bad or expired line) is empty: a zero record is 0.0.0.0/0, which no
// line can block. compact removes the empty slots. Keeps the 1M import under 1 s (a growing slice
// copied 50 MB: 1.09-1.27 s; chunks: 0.81-0.95 s in process).
type importBatch struct {
	chunks [maxImportLines / recChunk]*[recChunk]backend.Record
	n      int // slots, then records once compacted
	limit  int // lines the list may have (importLineLimit)
}

func newImportBatch(capacity int) *importBatch {
	return &importBatch{limit: importLineLimit(capacity)}
}

// makeSlots makes slots for lines up to (and including) line number last.
func (b *importBatch) makeSlots(last int) error {
	if last > b.limit {
		return userErrorf("more than %d lines (4 times block.capacity, at least 1M): split the list", b.limit)
	}
	for k := (b.n + recChunk - 1) / recChunk; k*recChunk < last; k++ {
		b.chunks[k] = new([recChunk]backend.Record)
	}
	b.n = max(b.n, last)
	return nil
}

func (b *importBatch) at(i int) *backend.Record { return &b.chunks[i/recChunk][i%recChunk] }

// readWindow is how many records orderedReader gathers at a time (128 KB).
const readWindow = 4096

// orderedReader returns a reader of the records at positions 0, 1, 2, ... of idx (nil: the identity),
// best read in that order: it gathers them a window at a time, in a loop that keeps many reads
// in flight. Read one by one between other work, a million records in random order wait for
// memory every time (0.2 s of an import). Each reader is for one goroutine. Keeps the 1M import
// under 1 s (0.94-1.01 s -> 0.84-0.96 s through the API).
func (b *importBatch) orderedReader(idx []int32) func(j int) backend.Record {
	n := b.n
	if idx != nil {
		n = len(idx)
	}
	var win []backend.Record
	w0 := 0
	return func(j int) backend.Record {
		if j < w0 || j >= w0+len(win) {
			w0, win = j, win[:0]
			for k := j; k < min(j+readWindow, n); k++ {
				i := k
				if idx != nil {
					i = int(idx[k])
				}
				win = append(win, *b.at(i))
			}
		}
		return win[j-w0]
	}
}

// compact moves the records over the empty slots (zero records: no prefix is /0), keeping their order,
// and lets unused chunks go.
func (b *importBatch) compact() {
	w := 0
	for i := range b.n {
		if r := b.at(i); r.Bits() != 0 {
			if w != i {
				*b.at(w) = *r
			}
			w++
		}
	}
	for k := (w + recChunk - 1) / recChunk; k*recChunk < b.n; k++ {
		b.chunks[k] = nil
	}
	b.n = w
}

// order returns the indexes of b's records in store order, repeated prefixes in line order. A
// list in order costs only the check (and gives nil: the identity); one in random order (a
// blocked.list is in the order its blocks were made) is radix-sorted.
func (b *importBatch) order() []int32 {
	sorted := true
	for i := 1; i < b.n && sorted; i++ {
		sorted = !b.at(i).Before(b.at(i - 1))
	}
	if sorted {
		return nil
	}
	return prefixOrder(b.n, func(i int) (hi, lo uint64, bits uint8, v6 bool) {
		r := b.at(i)
		hi, lo = r.Halves()
		return hi, lo, r.Bits(), r.V6()
	})
}

// uniqueRecs is an import's records in store order, one per prefix, as indexes into its batch.
// Keeps the 1M import's peak under 150 MB: a second copy of the records peaked at 151-154 MB.
type uniqueRecs struct {
	batch    *importBatch
	batchIdx []int32 // the batch index of each prefix's record, in store order
	// latestMs holds, by position, the latest time (ms) of a repeated prefix where it is later
	// than its first line's.
	latestMs map[int]int64
	repeated []int32 // positions of the prefixes given more than once, ascending
}

// unique picks, from b's records in order (from b.order), one per prefix: of repeated prefixes
// the first line's, which with latest (TTL imports) takes the latest deadline of them all; a
// permanent import keeps the first line's date. It only reads b and order.
func (b *importBatch) unique(order []int32, latest bool) *uniqueRecs {
	u := &uniqueRecs{batch: b, batchIdx: make([]int32, 0, b.n)}
	var first backend.Record // of the prefix being read
	for j := range b.n {
		i := int32(j)
		if order != nil {
			i = order[j]
		}
		r := b.at(int(i))
		if w := len(u.batchIdx) - 1; w >= 0 && r.SamePrefix(&first) {
			if latest && r.Ms() > first.Ms() {
				if u.latestMs == nil {
					u.latestMs = map[int]int64{}
				}
				first.SetMs(r.Ms())
				u.latestMs[w] = r.Ms()
			}
			if len(u.repeated) == 0 || u.repeated[len(u.repeated)-1] != int32(w) {
				u.repeated = append(u.repeated, int32(w))
			}
			continue
		}
		first = *r
		u.batchIdx = append(u.batchIdx, i)
	}
	return u
}

func (u *uniqueRecs) len() int { return len(u.batchIdx) }

// at is the record at position i of the store order, with its latest time.
func (u *uniqueRecs) at(i int) backend.Record {
	return u.withLatest(i, *u.batch.at(int(u.batchIdx[i])))
}

// orderedReader is at for reading in order (see importBatch.orderedReader).
func (u *uniqueRecs) orderedReader() func(i int) backend.Record {
	read := u.batch.orderedReader(u.batchIdx)
	return func(i int) backend.Record { return u.withLatest(i, read(i)) }
}

func (u *uniqueRecs) withLatest(i int, r backend.Record) backend.Record {
	if ms, ok := u.latestMs[i]; ok {
		r.SetMs(ms)
	}
	return r
}
