package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// comparison is the closing note of RESULTS.md: this run against an earlier
// results.json of the same machine (-before), row by row, so a change's effect is
// read next to the figures it changed.
type comparison struct {
	Label string     `json:"label"`
	Date  string     `json:"date"`
	Rows  []compared `json:"rows"`
}

type compared struct {
	Name      string  `json:"name"`
	Unit      string  `json:"unit"`
	Before    float64 `json:"before"`
	After     float64 `json:"after"`
	BeforeP50 float64 `json:"before_p50_ms,omitempty"`
	AfterP50  float64 `json:"after_p50_ms,omitempty"`
}

// compareWith reads the earlier run at path and pairs its rows with this run's by
// section and name; the token's own speed and the binary sizes are left out.
func compareWith(path, label string, rows []Row) (*comparison, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var before results
	if err := json.Unmarshal(data, &before); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	old := map[string]Row{}
	for _, r := range before.Rows {
		old[r.Section+"\x00"+r.Name] = r
	}
	c := &comparison{Label: label, Date: before.Machine.Date}
	for _, r := range rows {
		o, ok := old[r.Section+"\x00"+r.Name]
		if !ok || r.Value == nil || o.Value == nil || r.Section == secRaw || r.Section == secSize {
			continue
		}
		c.Rows = append(c.Rows, compared{Name: r.Name, Unit: r.Unit, Before: *o.Value, After: *r.Value,
			BeforeP50: o.Metrics["p50_ms"], AfterP50: r.Metrics["p50_ms"]})
	}
	return c, nil
}

func (c *comparison) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "## 8. Before and after\n\nBefore: %s (run of %s on this machine); after: this run. "+
		"Other work on the machine differs between two runs: read the ratios within each run first.\n\n", c.Label, c.Date)
	b.WriteString("| row | before | after | unit | after / before | p50 before | p50 after |\n|---|--:|--:|---|--:|--:|--:|\n")
	for _, r := range c.Rows {
		ratio := ""
		if r.Before != 0 {
			ratio = fmt.Sprintf("%.2f", r.After/r.Before)
		}
		p50 := func(v float64) string {
			if v == 0 {
				return "—"
			}
			return fmt.Sprintf("%.2f ms", v)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s |\n", cell(r.Name), num(&r.Before), num(&r.After), r.Unit, ratio,
			p50(r.BeforeP50), p50(r.AfterP50))
	}
	b.WriteString("\n")
}
