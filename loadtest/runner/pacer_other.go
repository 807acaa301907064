//go:build !linux

package runner

import "time"

func newTicker(start time.Time, period time.Duration) ticker { return newTimerTicker(start, period) }
