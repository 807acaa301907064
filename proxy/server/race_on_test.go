//go:build race

package server_test

// raceEnabled scales load down: the race detector makes every request ~10x
// dearer and the box is shared.
const raceEnabled = true
