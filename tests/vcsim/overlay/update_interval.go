// This file is added to govmomi's simulator package at build time by
// tests/vcsim/build.sh (go build -overlay); it is ours, not govmomi's.
// property_collector.go's WaitForUpdatesEx looks for updates every
// UpdateInterval() instead of a fixed 250 ms, so that the test bed can
// trade the stock accumulation of updates for speed (/_ctl/timing
// "update_ms").

package simulator

import (
	"sync/atomic"
	"time"
)

// DefaultUpdateInterval is govmomi's own interval.
const DefaultUpdateInterval = 250 * time.Millisecond

var updateInterval = int64(DefaultUpdateInterval)

// UpdateInterval is how often a waiting WaitForUpdatesEx looks for updates.
func UpdateInterval() time.Duration {
	return time.Duration(atomic.LoadInt64(&updateInterval))
}

// SetUpdateInterval changes it for the waits that start afterwards.
func SetUpdateInterval(d time.Duration) {
	atomic.StoreInt64(&updateInterval, int64(d))
}
