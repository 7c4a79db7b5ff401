package commit

import "go.podman.io/storage"

// The graph driver's probe, made before the first commit needs it.
//
// The first layer a process makes in an overlay store has containers/storage
// probe whether the kernel can idmap the layers' mounts (the overlay
// driver's SupportsShifting: a child process and a test mount, about 0.6 s
// on a 2-core machine), inside the store's layer lock, unless a process
// recorded the answer under the run root since the machine started. That
// first commit is a run's base layer, which every other image waits for: a
// fresh CI machine's first pull paid the probe there, with the cores
// mostly idle. So herd makes the probe in the background as its pulls
// start, and a commit waits for the probe's end instead of starting its
// own: the driver records the answer without a lock, so the two must not
// run at once.

// ProbeDriver starts the graph driver's probe for the first layer of the
// run, which store is to commit. Close waits for it: a process that ended
// during the probe would leave its test mount behind.
func (c *Coordinator) ProbeDriver(store storage.Store) {
	probed := make(chan struct{})
	c.driverProbed = probed
	go func() {
		defer close(probed)
		if driver, err := store.GraphDriver(); err == nil {
			driver.SupportsShifting(store.UIDMap(), store.GIDMap())
		}
	}()
}

// awaitDriverProbe waits, before a layer is made, for the probe
// ProbeDriver started, if any.
func (c *Coordinator) awaitDriverProbe() {
	if c.driverProbed != nil {
		<-c.driverProbed
	}
}
