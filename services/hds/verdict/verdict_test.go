package verdict

import (
	"fmt"
	"strings"
	"testing"
)

func TestRules(t *testing.T) {
	cases := []struct {
		rule  Rule
		votes []Vote
		want  Verdict
	}{
		{AnyHealthy, nil, Unknown},
		{AnyHealthy, []Vote{{"a", Healthy}, {"b", Unhealthy}}, Up},
		{AnyHealthy, []Vote{{"a", Timeout}, {"b", Unhealthy}}, Dead},
		{AnyHealthy, []Vote{{"a", Unhealthy}}, Dead},
		{AnyHealthy, []Vote{{"a", None}}, Unknown},
		{Majority, []Vote{{"a", Healthy}, {"b", Unhealthy}}, Up},
		{Majority, []Vote{{"a", Healthy}, {"b", Unhealthy}, {"c", Timeout}}, Dead},
		{Majority, []Vote{{"a", Healthy}, {"b", Healthy}, {"c", Timeout}}, Up},
	}
	cfg := DefaultConfig()
	for i, c := range cases {
		cfg.Rule = c.rule
		got, _ := Aggregate(cfg, map[string][]Vote{"e": c.votes})
		if got["e"].Verdict != c.want {
			t.Errorf("case %d %s %s: got %v (%s), want %v", i, c.rule, Describe(c.votes), got["e"].Verdict, got["e"].Reason, c.want)
		}
	}
}

func TestCheckersAndReason(t *testing.T) {
	got, _ := Aggregate(DefaultConfig(), map[string][]Vote{"e": {{"b", Unhealthy}, {"a", Timeout}}})
	r := got["e"]
	if r.Verdict != Dead || fmt.Sprint(r.Checkers) != "[a b]" || r.Reason != "2/2 fresh checkers report down" {
		t.Fatalf("got %+v", r)
	}
}

// One checker that suddenly sees everything down, while the others see the
// same endpoints up, must not take down the endpoints it checks alone.
func TestSuspectCheckerDoesNotFlipFleet(t *testing.T) {
	votes := map[string][]Vote{}
	for i := 0; i < 10; i++ {
		ep := fmt.Sprintf("e%d", i)
		if i < 6 {
			votes[ep] = []Vote{{"broken", Unhealthy}, {fmt.Sprintf("ok%d", i), Healthy}}
		} else {
			votes[ep] = []Vote{{"broken", Unhealthy}} // its partner is stale
		}
	}
	got, suspects := Aggregate(DefaultConfig(), votes)
	if fmt.Sprint(suspects) != "[broken]" {
		t.Fatalf("suspects = %v", suspects)
	}
	for ep, r := range got {
		if r.Verdict == Dead {
			t.Errorf("%s went UNHEALTHY on a suspect's word: %s", ep, r.Reason)
		}
	}
	if !strings.Contains(got["e7"].Reason, "suspect") {
		t.Errorf("reason %q does not say why", got["e7"].Reason)
	}
	cfg := DefaultConfig()
	cfg.SuspectFraction = 0
	got, suspects = Aggregate(cfg, votes)
	if len(suspects) != 0 || got["e7"].Verdict != Dead {
		t.Errorf("with suspicion disabled: suspects %v, e7 %v", suspects, got["e7"].Verdict)
	}
}

// When everything really dies, all checkers agree: nobody is suspect and
// every endpoint goes UNHEALTHY.
func TestRealOutageIsNotSuspect(t *testing.T) {
	votes := map[string][]Vote{}
	for i := 0; i < 10; i++ {
		votes[fmt.Sprintf("e%d", i)] = []Vote{{"a", Unhealthy}, {"b", Timeout}}
	}
	got, suspects := Aggregate(DefaultConfig(), votes)
	if len(suspects) != 0 {
		t.Fatalf("suspects %v in a real outage", suspects)
	}
	for ep, r := range got {
		if r.Verdict != Dead {
			t.Errorf("%s = %v", ep, r.Verdict)
		}
	}
}

func TestParseRule(t *testing.T) {
	if _, err := ParseRule("any-healthy"); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseRule("coin-flip"); err == nil || !strings.Contains(err.Error(), "coin-flip") {
		t.Fatalf("err = %v", err)
	}
}
