package commit

import (
	"slices"

	digest "github.com/opencontainers/go-digest"
)

// Layers with the same files, pulled one after the other.
//
// A zstd:chunked partial pull fetches only the files (chunks) that no layer
// in the store has yet: containers/storage's pkg/chunked looks for each
// file in the layers committed when its differ is made. Two layers that
// are different blobs but share many files (git and perl; python3 and a
// python3 with numpy, each installed over the same base) each fetch those
// files in full when they are pulled at the same moment, where a
// sequential pull fetches them once. So when a layer's lookup would claim
// it while another image of the run fetches a similar layer, it waits for
// that layer's commit first, as it would for its own blob, and then claims
// it: its differ finds the shared files in the store.
//
// Similar means: the other layer has at least similarShare of this
// layer's file bytes (by content digest, from both TOCs); it is waited for
// while it still has that much that no layer this run committed brought. A
// small overlap is not worth the wait, which takes work off the cores but
// adds the other layer's pull to this one's path.
//
// Such a wait is taken only by a pull that owns no flight (claims), so no
// pull of this process waits for it meanwhile, and it can close no cycle
// whatever the other layer's owner waits for (invariant 3). Its other
// layers cannot be decided meanwhile either: containers/image holds the
// image's lock during the lookup, as for any wait.

// similarShare: a layer waits for one with at least this fraction of its
// file bytes.
const similarShare = 0.25

// Files is what a zstd:chunked layer holds, from its TOC: the size of each
// regular file's content, by the content's digest.
type Files map[digest.Digest]int64

// similarity is what the coordinator keeps of the plan's TOCs: of each
// layer's files only those another layer has too, which can be a small part
// of them (a run of large images holds hundreds of thousands of files).
type similarity struct {
	shared  map[digest.Digest]Files           // layer blob → its files that another layer has too
	total   map[digest.Digest]int64           // layer blob → its file bytes
	similar map[digest.Digest][]digest.Digest // layer blob → layers with similarShare of its file bytes
	saves   map[digest.Digest]int64           // layer blob → file bytes the layers similar to it share with it
	waiters map[digest.Digest][]digest.Digest // layer blob → layers it is similar to (which may wait for it)
}

// newSimilarity finds the similar layers among files, the files of each
// layer blob.
func newSimilarity(files map[digest.Digest]Files) similarity {
	holders := map[digest.Digest][]digest.Digest{} // file digest → layer blobs with it
	for blob, own := range files {
		for f := range own {
			holders[f] = append(holders[f], blob)
		}
	}
	s := similarity{
		shared: map[digest.Digest]Files{}, total: map[digest.Digest]int64{},
		similar: map[digest.Digest][]digest.Digest{}, saves: map[digest.Digest]int64{},
		waiters: map[digest.Digest][]digest.Digest{},
	}
	for blob, own := range files {
		var total int64
		sharedWith := map[digest.Digest]int64{}
		for f, size := range own {
			total += size
			if len(holders[f]) < 2 {
				continue
			}
			if s.shared[blob] == nil {
				s.shared[blob] = Files{}
			}
			s.shared[blob][f] = size
			for _, other := range holders[f] {
				if other != blob {
					sharedWith[other] += size
				}
			}
		}
		s.total[blob] = total
		for other, n := range sharedWith {
			if total > 0 && float64(n) >= similarShare*float64(total) {
				s.similar[blob] = append(s.similar[blob], other)
				s.saves[other] += n
				s.waiters[other] = append(s.waiters[other], blob)
			}
		}
	}
	return s
}

// similarFlightLocked returns a flight of a layer similar to blob that
// img may wait for before claiming blob, and that layer's blob; nil if
// there is none. c.mu must be held.
func (c *Coordinator) similarFlightLocked(img *Image, blob digest.Digest) (digest.Digest, *flight) {
	if len(c.sim.similar[blob]) == 0 {
		return "", nil
	}
	img.mu.Lock()
	owns := len(img.claims) > 0
	img.mu.Unlock()
	if owns {
		return "", nil
	}
	for _, other := range c.sim.similar[blob] {
		// Only this process's flights: another process's ends when its lock
		// is free, which says nothing of whether it committed the layer.
		// Its owner is not img and waits for nothing of img's: img owns no
		// flight.
		if f := c.flights[other]; f != nil && f.owner != nil && c.bringsLocked(blob, other, similarShare) {
			return other, f
		}
	}
	return "", nil
}

// bringsLocked reports whether other's layer still brings share of blob's
// file bytes into the store: files they share that no layer committed in
// this run has. Once a third layer brought them, waiting for other saves
// nothing. c.mu must be held.
func (c *Coordinator) bringsLocked(blob, other digest.Digest, share float64) bool {
	var gain int64
	for f, size := range c.sim.shared[blob] {
		if _, ok := c.sim.shared[other][f]; ok && !c.storedFiles[f] {
			gain += size
		}
	}
	return float64(gain) >= share*float64(c.sim.total[blob])
}

// sharedShare: a layer that no other pull waits for waits, before its
// partial pull, for a layer in flight with at least this fraction of its
// file bytes (Store.awaitSharedFiles).
const sharedShare = 0.02

// sharingFlightLocked returns a flight of a layer that still brings
// sharedShare of blob's file bytes, that img may wait for before it pulls
// blob's layer: a layer below it in img (its commit comes first anyway),
// or, unless ownOnly, a layer of another image of this process that other
// pulls need too (neededLocked: the staging gate lets those go first, so
// a wait for one is short; waits for layers nobody needs would chain them
// one behind the other) and img may wait for (no cycle: invariant 3). It
// returns nil if there is none. c.mu must be held.
func (c *Coordinator) sharingFlightLocked(img *Image, blob digest.Digest, ownOnly bool) (digest.Digest, *flight) {
	if len(c.sim.shared[blob]) == 0 {
		return "", nil
	}
	for other, f := range c.flights {
		switch {
		case other == blob || f.owner == nil:
			continue
		case f.owner == img:
			if !slices.Contains(img.layersAbove(other), blob) {
				continue
			}
		case ownOnly || !c.neededLocked(other) || !c.mayWaitLocked(img, other, f):
			continue
		}
		if c.bringsLocked(blob, other, sharedShare) {
			return other, f
		}
	}
	return "", nil
}

// filesCommittedLocked records that blob's layer is in the store, with
// its files. c.mu must be held.
func (c *Coordinator) filesCommittedLocked(blob digest.Digest) {
	c.committedBlobs[blob] = true
	for f := range c.sim.shared[blob] {
		c.storedFiles[f] = true
	}
}

// The lead image goes first.
//
// Similar layers are waited for only while one is in flight (an owner to
// wait for), so which of two similar layers goes first would otherwise be
// a race between their images' first lookups, which containers/image makes
// all at once. The image whose layers save the others the most
// (similarity.saves) is the lead: the pull engine starts the other
// images once the lead has decided each of those layers (claimed it, found
// it, or waited), or has started to wait for anything, or its attempt has
// ended. Until then the others hold nothing (no slot, no claim), so the
// lead needs nothing from them.

// leadOf returns the plan's image whose layers save the others the most
// file bytes, or -1 if no layer saves any.
func leadOf(plan Plan, saves map[digest.Digest]int64) int {
	lead, most := -1, int64(0)
	for i, img := range plan {
		var n int64
		for _, l := range img.Layers {
			n += saves[l.Blob]
		}
		if n > most {
			lead, most = i, n
		}
	}
	return lead
}

// Lead returns the plan's lead image (-1 if it has none) and a channel that
// is closed once the other images may start.
func (c *Coordinator) Lead() (int, <-chan struct{}) { return c.lead, c.leadReady }

// leadDecidedLocked closes leadReady if img is the lead and it has decided
// each of its layers that saves others file bytes, or if waitsOrEnded says
// it starts to wait or its attempt has ended. c.mu must be held.
func (c *Coordinator) leadDecidedLocked(img *Image, waitsOrEnded bool) {
	if img.index != c.lead {
		return
	}
	if !waitsOrEnded && !img.decided(c.sim.saves) {
		return
	}
	c.leadOnce.Do(func() { close(c.leadReady) })
}

// decided reports whether each of img's layers that saves others file
// bytes has been claimed or looked up.
func (img *Image) decided(saves map[digest.Digest]int64) bool {
	img.mu.Lock()
	defer img.mu.Unlock()
	for _, l := range img.layers {
		if saves[l] > 0 && img.claims[l] == nil && !img.looked[l] {
			return false
		}
	}
	return true
}
