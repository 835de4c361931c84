package server

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/audit"
)

// Metrics are the sidecar's Prometheus metrics, served at /metrics on the
// metrics listener. Labels are providers, outcomes and credential-free
// reasons: never an owner, a connection id or anything secret.
//
//	tokenvault_token_reads_total{provider,code}           GetAccessToken calls by outcome
//	tokenvault_refreshes_total{provider,outcome}          provider refresh calls: ok, needs_reauth, transient, misconfigured
//	tokenvault_refresh_duration_seconds{provider}         provider refresh call latency
//	tokenvault_connections{provider,status}               connections by status (read from the vault at scrape)
//	tokenvault_audit_backlog                              audit records waiting to be written
//	tokenvault_audit_dropped_total                        audit records lost (buffer full or store failing)
//	tokenvault_audit_written_total                        audit records written
//	tokenvault_auth_failures_total{reason}                calls refused: UNAUTHENTICATED, PERMISSION_DENIED, RATE_LIMITED
//	tokenvault_callback_failures_total                    OAuth callbacks that failed, each counted (server.go)
//
// plus the Go runtime's and the process's collectors. Other parts of the
// sidecar add theirs with Register: webhook delivery is expected as
// tokenvault_webhook_deliveries_total{outcome} and tokenvault_webhook_backlog.
//
// A Metrics is safe for concurrent use. Its methods do nothing on a nil
// *Metrics, so the server runs without one.
type Metrics struct {
	reg          *prometheus.Registry
	tokenReads   *prometheus.CounterVec
	refreshes    *prometheus.CounterVec
	refreshTime  *prometheus.HistogramVec
	authFailures [failKinds]prometheus.Counter

	// tokenReadCounters are tokenReads' children resolved once per
	// provider and code, so that counting a read is an atomic add with no
	// label hashing. Filled by attach before serving; read-only after.
	tokenReadCounters map[string]*[len(codeNames)]prometheus.Counter

	attachOnce sync.Once
}

// failure kinds of tokenvault_auth_failures_total.
const (
	failUnauthenticated = iota
	failDenied
	failRateLimited
	failKinds
)

// NewMetrics returns Metrics on a registry of their own. Pass its
// ObserveRefresh to vault.Config.OnRefresh and the Metrics to
// Config.Metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		tokenReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenvault_token_reads_total",
			Help: "GetAccessToken calls, by provider and gRPC code.",
		}, []string{"provider", "code"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenvault_refreshes_total",
			Help: "Refresh calls to providers, by provider and outcome (ok, needs_reauth, transient, misconfigured).",
		}, []string{"provider", "outcome"}),
		refreshTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenvault_refresh_duration_seconds",
			Help:    "Latency of refresh calls to providers.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"provider"}),
		tokenReadCounters: map[string]*[len(codeNames)]prometheus.Counter{},
	}
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenvault_auth_failures_total",
		Help: "Calls refused before their handler, by ErrorInfo reason.",
	}, []string{"reason"})
	m.authFailures[failUnauthenticated] = failures.WithLabelValues(ReasonUnauthenticated)
	m.authFailures[failDenied] = failures.WithLabelValues(ReasonPermissionDenied)
	m.authFailures[failRateLimited] = failures.WithLabelValues(ReasonRateLimited)
	m.reg.MustRegister(m.tokenReads, m.refreshes, m.refreshTime, failures,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry /metrics serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Register adds collectors to /metrics (webhook deliveries and backlog are
// expected here). Names must start with "tokenvault_" and labels follow the
// rule above: no owners, no connection ids, nothing secret.
func (m *Metrics) Register(cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := m.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// ObserveRefresh counts one provider refresh call; it is the vault's
// Config.OnRefresh.
func (m *Metrics) ObserveRefresh(provider, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.refreshes.WithLabelValues(provider, outcome).Inc()
	m.refreshTime.WithLabelValues(provider).Observe(d.Seconds())
}

// attach registers the collectors that read v and audit, and resolves the
// token-read counters of the given providers. Only the first call counts.
func (m *Metrics) attach(v *vault.Vault, audit *audit.Log, providers []string) {
	if m == nil {
		return
	}
	m.attachOnce.Do(func() {
		for _, p := range append([]string{""}, providers...) {
			var cs [len(codeNames)]prometheus.Counter
			for c := range cs {
				cs[c] = m.tokenReads.WithLabelValues(p, codeNames[c])
			}
			m.tokenReadCounters[p] = &cs
		}
		if v != nil {
			m.reg.MustRegister(&connectionsCollector{v: v, providers: providers},
				prometheus.NewGaugeFunc(prometheus.GaugeOpts{
					Name: "tokenvault_records_unreadable",
					Help: "Connection records quarantined because they do not open (damaged or tampered with); tokenvault records unreadable lists them.",
				}, func() float64 { return float64(v.UnreadableCount()) }),
				prometheus.NewGaugeFunc(prometheus.GaugeOpts{
					Name: "tokenvault_vault_loading",
					Help: "1 while the connections load after the start (tokens are read from their records meanwhile; other calls wait for the load), then 0.",
				}, func() float64 {
					if v.Loading() {
						return 1
					}
					return 0
				}))
		}
		if audit != nil {
			m.reg.MustRegister(
				prometheus.NewGaugeFunc(prometheus.GaugeOpts{
					Name: "tokenvault_audit_backlog",
					Help: "Audit records waiting to be written.",
				}, func() float64 { return float64(audit.Backlog()) }),
				prometheus.NewCounterFunc(prometheus.CounterOpts{
					Name: "tokenvault_audit_dropped_total",
					Help: "Audit records lost because the buffer stayed full or the store failed.",
				}, func() float64 { return float64(audit.Dropped()) }),
				prometheus.NewCounterFunc(prometheus.CounterOpts{
					Name: "tokenvault_audit_written_total",
					Help: "Audit records written to the store.",
				}, func() float64 { return float64(audit.Written()) }),
			)
		}
	})
}

// tokenRead counts one GetAccessToken call. provider is "" when the
// connection is unknown.
func (m *Metrics) tokenRead(provider string, code codes.Code) {
	if m == nil {
		return
	}
	if cs := m.tokenReadCounters[provider]; cs != nil {
		cs[code].Inc()
		return
	}
	// A provider that left the configuration but still has connections.
	m.tokenReads.WithLabelValues(provider, codeNames[code]).Inc()
}

func (m *Metrics) authFailure(kind int) {
	if m == nil {
		return
	}
	m.authFailures[kind].Inc()
}

// connectionsCollector reports connections by provider and status, read
// from the vault at scrape time. Configured providers report every status,
// zeros included, so that "no connection needs re-authorization" is a 0
// and not an absent series.
type connectionsCollector struct {
	v         *vault.Vault
	providers []string
}

var connectionsDesc = prometheus.NewDesc("tokenvault_connections",
	"Connections by provider and status (active, needs_reauth, revoked).",
	[]string{"provider", "status"}, nil)

func (c *connectionsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- connectionsDesc }

func (c *connectionsCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct {
		p string
		s vault.Status
	}
	counts := map[key]int{}
	for _, p := range c.providers {
		for _, s := range []vault.Status{vault.StatusActive, vault.StatusNeedsReauth, vault.StatusRevoked} {
			counts[key{p, s}] = 0
		}
	}
	for _, sc := range c.v.CountByStatus() {
		counts[key{sc.Provider, sc.Status}] = sc.Count
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(connectionsDesc, prometheus.GaugeValue, float64(n), k.p, string(k.s))
	}
}
