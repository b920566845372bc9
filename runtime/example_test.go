package runtime_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/handoff-dev/handoff/runtime"
)

// A program in library mode: run, it is the primary of two workers that
// share 127.0.0.1:8080; rebuilt and sent SIGHUP, it deploys itself. Here
// it runs standalone (one process, as with HANDOFF_STANDALONE=1) so that
// the example can check its own answer.
func ExampleMain() {
	ctx, stop := context.WithCancel(context.Background())
	err := runtime.Main(ctx, runtime.App{
		Standalone: true, // drop this line to run as a primary with workers
		Config: runtime.Config{
			Listeners: []runtime.Listener{{Name: "web", Network: "tcp", Address: "127.0.0.1:0"}},
			Workers:   2,
		},
		Worker: func(ctx context.Context, w *runtime.Worker) error {
			srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(rw, "hello from slot %d\n", w.Slot())
			})}
			go func() { // a client, for the example's sake
				defer stop()
				resp, err := http.Get("http://" + w.Listener("web").Addr().String())
				if err != nil {
					fmt.Println(err)
					return
				}
				io.Copy(os.Stdout, resp.Body)
				resp.Body.Close()
			}()
			// Says ready once serving; drains with no lost request.
			return w.Serve(srv, nil)
		},
	})
	fmt.Println("stopped:", err)
	// Output:
	// hello from slot 0
	// stopped: <nil>
}

// Messages between the primary and its workers, as Node's process.send
// and worker.send: the primary broadcasts, a worker answers, the primary
// replies to that very worker. (Standalone here, so the example runs in
// one process; with a primary the code is the same.)
func ExampleHub() {
	ctx, stop := context.WithCancel(context.Background())
	err := runtime.Main(ctx, runtime.App{
		Standalone: true,
		Config: runtime.Config{
			Listeners: []runtime.Listener{{Network: "tcp", Address: "127.0.0.1:0"}},
		},
		// In the primary, beside the workers.
		Primary: func(ctx context.Context, hub *runtime.Hub) {
			hub.Broadcast(map[string]string{"config": "v7"})
		},
		// In the primary: what workers send, serially per worker.
		OnMessage: func(m runtime.Message) {
			var got struct{ Loaded string }
			m.Decode(&got)
			fmt.Printf("worker %d loaded %s\n", m.Slot, got.Loaded)
			m.Reply("thanks")
		},
		Worker: func(ctx context.Context, w *runtime.Worker) error {
			w.OnMessage(func(data json.RawMessage) {
				var v any
				json.Unmarshal(data, &v)
				fmt.Println("worker got", v)
				if m, ok := v.(map[string]any); ok {
					w.Send(map[string]any{"loaded": m["config"]})
				} else {
					stop()
				}
			})
			w.Ready()
			<-ctx.Done()
			return nil
		},
	})
	fmt.Println("stopped:", err)
	// Output:
	// worker got map[config:v7]
	// worker 0 loaded v7
	// worker got thanks
	// stopped: <nil>
}
