// Package verdict combines the votes of an endpoint's checkers into one
// verdict. Votes given here are already fresh (the caller drops votes of
// checkers that stopped reporting); the rule leans towards "healthy" because
// a checker's own network trouble must not take an endpoint out.
package verdict

import (
	"fmt"
	"sort"
	"strings"
)

// Status is one checker's view of one endpoint.
type Status uint8

// Statuses a checker can report (Envoy reports HEALTHY, UNHEALTHY, TIMEOUT).
const (
	None Status = iota // no vote / deleted
	Healthy
	Unhealthy
	Timeout
)

func (s Status) String() string {
	return [...]string{"NONE", "HEALTHY", "UNHEALTHY", "TIMEOUT"}[min(int(s), 3)]
}

// Down reports whether s counts against the endpoint.
func (s Status) Down() bool { return s == Unhealthy || s == Timeout }

// Verdict is the aggregate; values match healthfeed.v1.Verdict.
type Verdict uint8

// Verdicts.
const (
	Unknown Verdict = iota
	Up
	Dead
)

func (v Verdict) String() string {
	return [...]string{"UNKNOWN", "HEALTHY", "UNHEALTHY"}[min(int(v), 2)]
}

// Rule decides the verdict from fresh votes.
type Rule string

// Rules.
const (
	// AnyHealthy: healthy if any fresh checker sees the endpoint healthy,
	// unhealthy only when all fresh checkers agree it is down.
	AnyHealthy Rule = "any-healthy"
	// Majority: unhealthy when more than half of the fresh checkers say down.
	Majority Rule = "majority"
)

// ParseRule validates a rule name.
func ParseRule(s string) (Rule, error) {
	switch r := Rule(s); r {
	case AnyHealthy, Majority:
		return r, nil
	}
	return "", fmt.Errorf("verdict rule %q: want %s or %s", s, AnyHealthy, Majority)
}

// Config tunes aggregation.
type Config struct {
	Rule Rule
	// A checker is suspect when it votes on at least SuspectMin endpoints,
	// at least SuspectFraction of them down, and on most of its down
	// endpoints that another checker also votes on, that checker says
	// healthy. Suspects' votes are ignored. SuspectFraction 0 disables it.
	SuspectFraction float64
	SuspectMin      int
}

// DefaultConfig is the documented default.
func DefaultConfig() Config {
	return Config{Rule: AnyHealthy, SuspectFraction: 0.8, SuspectMin: 3}
}

// Vote is one fresh vote.
type Vote struct {
	Checker string
	Status  Status
}

// Result is one endpoint's verdict.
type Result struct {
	Verdict  Verdict
	Checkers []string // the checkers whose votes counted, sorted
	Reason   string
}

// Aggregate computes the verdict of every endpoint in votes and returns the
// suspect checkers, sorted.
func Aggregate[K comparable](cfg Config, votes map[K][]Vote) (map[K]Result, []string) {
	suspects := findSuspects(cfg, votes)
	out := make(map[K]Result, len(votes))
	for k, vs := range votes {
		var up, down int
		var who []string
		ignored := 0
		for _, v := range vs {
			if suspects[v.Checker] {
				ignored++
				continue
			}
			switch {
			case v.Status == Healthy:
				up++
			case v.Status.Down():
				down++
			default:
				continue
			}
			who = append(who, v.Checker)
		}
		sort.Strings(who)
		n := up + down
		r := Result{Checkers: who}
		switch {
		case n == 0:
			r.Verdict, r.Reason = Unknown, "no fresh votes"
		case cfg.Rule == Majority && down*2 > n, cfg.Rule != Majority && up == 0:
			r.Verdict, r.Reason = Dead, fmt.Sprintf("%d/%d fresh checkers report down", down, n)
		default:
			r.Verdict, r.Reason = Up, fmt.Sprintf("%d/%d fresh checkers report healthy", up, n)
		}
		if ignored > 0 {
			r.Reason += fmt.Sprintf(" (%d suspect checker vote(s) ignored)", ignored)
		}
		out[k] = r
	}
	list := make([]string, 0, len(suspects))
	for s := range suspects {
		list = append(list, s)
	}
	sort.Strings(list)
	return out, list
}

func findSuspects[K comparable](cfg Config, votes map[K][]Vote) map[string]bool {
	if cfg.SuspectFraction <= 0 {
		return nil
	}
	type tally struct{ total, down, downShared, contradicted int }
	t := map[string]*tally{}
	for _, vs := range votes {
		ups := 0
		for _, v := range vs {
			if v.Status == Healthy {
				ups++
			}
		}
		for _, v := range vs {
			c := t[v.Checker]
			if c == nil {
				c = &tally{}
				t[v.Checker] = c
			}
			c.total++
			if !v.Status.Down() {
				continue
			}
			c.down++
			if len(vs) > 1 {
				c.downShared++
				if ups > 0 {
					c.contradicted++
				}
			}
		}
	}
	out := map[string]bool{}
	for id, c := range t {
		if c.total >= max(cfg.SuspectMin, 1) && float64(c.down) >= cfg.SuspectFraction*float64(c.total) &&
			c.downShared > 0 && c.contradicted*2 > c.downShared {
			out[id] = true
		}
	}
	return out
}

// Describe renders votes for logs and admin pages.
func Describe(vs []Vote) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = v.Checker + "=" + v.Status.String()
	}
	return strings.Join(parts, ",")
}
