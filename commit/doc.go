// Package commit is how layers reach the store and become visible in it
// when many images are pulled at once, so that a blob several images need
// is fetched once per run, and once across herd processes on one store.
//
//   - coordinator.go: the Coordinator, built from the run's Plan, knows which
//     pull fetches which blob; an Image (one attempt of one image's pull)
//     claims a blob, or waits for the pull that fetches it. Its invariants
//     are stated there.
//   - locks.go: BlobLocks, through which herd processes on one store see
//     each other's fetches.
//   - store.go: Store, each image's view of the shared storage.Store, where
//     lookups wait and commits end waits; it reports commits and their
//     failures (Hooks) and explains a parent layer removed meanwhile; a
//     partially pulled layer's staged output lets go of the differ once
//     staged and of the TOC once committed (memory).
//   - wholelayer.go: a whole (gzip, zstd) layer a pull claims is fetched by
//     the Store itself, in the background, and applied when
//     containers/image commits it, decompressed once instead of twice.
//   - tarcheck.go: every whole layer's tar is checked on its way into the
//     store, and a hostile one refused before it is committed.
package commit
