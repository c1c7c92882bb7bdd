package collector

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// LookupCounter counts the connections looked up in conntrack tables
// (resolve.Resolver).
type LookupCounter interface {
	// Lookups returns the connections looked up since start, by method.
	Lookups() (kernel, dump, get uint64)
}

// ProgramCounter is the recording program's run time, as the kernel counts
// it while BPF statistics are enabled, its skipped runs, and the closes it
// could not record (bpf.Tracker).
type ProgramCounter interface {
	ProgramStats() (runTime time.Duration, runs, missed uint64, err error)
	LostCloses() (uint64, error)
}

var (
	lookupsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "lookups_total"),
		"Connections looked up in a conntrack table, by method: kernel (lookups from a BPF program), dump (a dump of the table), get (one netlink request each).",
		[]string{"method"}, nil)
	programRunTimeDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "bpf", "program_run_seconds_total"),
		"Time the recording program has run, counted by the kernel only while kernel.bpf_stats_enabled is 1.", nil, nil)
	programRunsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "bpf", "program_runs_total"),
		"Runs of the recording program, counted by the kernel only while kernel.bpf_stats_enabled is 1.", nil, nil)
	programMissedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "bpf", "program_missed_runs_total"),
		"Runs of the recording program the kernel skipped because it was already running on that CPU (interrupted by a socket change in an interrupt): the openings and closes they would have seen are not recorded.", nil, nil)
	lostClosesDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "bpf", "lost_closes_total"),
		"Closes the recording program could not record: its CPU's log was full and the connection's opening still waited in a log. Such a connection ends at a later scrape, as last seen, and may be counted as failed.", nil, nil)
)

// Kernel is the collector of what the kernel side costs: connections
// looked up in conntrack tables by method, and the recording program's
// run time.
type Kernel struct {
	lookups  LookupCounter
	programs ProgramCounter
}

// NewKernel returns the collector of lookups and programs.
func NewKernel(lookups LookupCounter, programs ProgramCounter) *Kernel {
	return &Kernel{lookups: lookups, programs: programs}
}

// Update sends the counts. It fails when the program's statistics cannot
// be read, after sending the rest.
func (k *Kernel) Update(_ context.Context, ch chan<- prometheus.Metric) error {
	kernel, dump, get := k.lookups.Lookups()
	for _, m := range []struct {
		method string
		n      uint64
	}{{"kernel", kernel}, {"dump", dump}, {"get", get}} {
		ch <- prometheus.MustNewConstMetric(lookupsDesc, prometheus.CounterValue, float64(m.n), m.method)
	}
	run, runs, missed, err := k.programs.ProgramStats()
	if err != nil {
		return fmt.Errorf("read program statistics: %w", err)
	}
	ch <- prometheus.MustNewConstMetric(programRunTimeDesc, prometheus.CounterValue, run.Seconds())
	ch <- prometheus.MustNewConstMetric(programRunsDesc, prometheus.CounterValue, float64(runs))
	ch <- prometheus.MustNewConstMetric(programMissedDesc, prometheus.CounterValue, float64(missed))
	lost, err := k.programs.LostCloses()
	if err != nil {
		return fmt.Errorf("read lost closes: %w", err)
	}
	ch <- prometheus.MustNewConstMetric(lostClosesDesc, prometheus.CounterValue, float64(lost))
	return nil
}
