//go:build race

package main_test

// raceEnabled scales the load generator down: the race detector makes
// every client request much dearer on a shared box.
const raceEnabled = true
