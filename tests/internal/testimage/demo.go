package testimage

import (
	"context"
	"fmt"
)

// PushDemoSet pushes the sample images `make demo` pulls: six images that
// all share an OS base layer, half of which share a runtime layer, each with
// its own app layer; the first three gzip, the others zstd:chunked, so that
// the same base content reaches the store in two compressions in one run.
func (p *Pusher) PushDemoSet(ctx context.Context) ([]Pushed, error) {
	base := RandomLayer(1, 64, 64*1024)
	runtime := RandomLayer(2, 48, 64*1024)
	var out []Pushed
	for i := 0; i < 6; i++ {
		layers := []Layer{base}
		if i%2 == 0 {
			layers = append(layers, runtime)
		}
		layers = append(layers, RandomLayer(int64(10+i), 8, 32*1024))
		comp := "gzip"
		if i >= 3 {
			comp = "zstd:chunked"
		}
		pushed, err := p.Push(ctx, fmt.Sprintf("demo/app%d:latest", i), Image{Layers: layers}, comp)
		if err != nil {
			return nil, err
		}
		out = append(out, pushed)
	}
	return out, nil
}
