package main

import (
	"context"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"testing"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 1600}, {1 << 20, 1600}, {4 << 20, 1600}, {5 << 20, 1250}, {16 << 20, 400}, {30 << 20, 200},
		{32 << 20, 200}, {63 << 20, 100}, {64 << 20, 100}, {1 << 30, 100},
	} {
		if got := gcPercentFor(c.live); got != c.want {
			t.Errorf("gcPercentFor(%d MB) = %d, want %d", c.live>>20, got, c.want)
		}
	}
}

// TestTuneGC: while tuneGC runs, GOGC is what gcPercentFor gives for the live heap; when its
// context ends, Go's 100 again. (Not parallel: GOGC belongs to the whole process.)
func TestTuneGC(t *testing.T) {
	samples := []rtmetrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/heap/live:bytes"}}
	gogc := func() (percent int, want int) {
		rtmetrics.Read(samples)
		return int(samples[0].Value.Uint64()), gcPercentFor(samples[1].Value.Uint64())
	}
	debug.SetGCPercent(123) // not a value tuneGC sets: its own setting is then told apart
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tuneGC(ctx); close(done) }()
	waitFor(t, "GOGC set from the live heap", func() bool { got, want := gogc(); return got == want })
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("tuneGC did not return when its context ended")
	}
	if got, _ := gogc(); got != 100 {
		t.Errorf("GOGC %d after tuneGC ended, want 100", got)
	}
}
