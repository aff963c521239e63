// Concat of up to 6 inputs along one axis. The output is viewed as
// [outer, total * inner] with each input [outer, len_t * inner]; one
// invocation copies one element. Mirrors Concat in src/ops/movement.rs.
//
// Bindings: 0 output, 1 parameters, 2..7 inputs (zero buffers past `count`).
// Workgroups are laid out 2-D when one dimension would exceed the limit:
// the flat workgroup index is wg.y * num_workgroups.x + wg.x.

struct Params {
    // Output elements.
    n: u32,
    // Product of the axes after the concatenation axis.
    inner: u32,
    // Sum of the inputs' lengths along the axis.
    total: u32,
    // Number of inputs.
    count: u32,
    // The inputs' lengths along the axis (entry t at [t / 4][t % 4]).
    lens: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> x0: array<f32>;
@group(0) @binding(3) var<storage, read> x1: array<f32>;
@group(0) @binding(4) var<storage, read> x2: array<f32>;
@group(0) @binding(5) var<storage, read> x3: array<f32>;
@group(0) @binding(6) var<storage, read> x4: array<f32>;
@group(0) @binding(7) var<storage, read> x5: array<f32>;

fn input_at(t: u32, at: u32) -> f32 {
    switch t {
        case 0u: { return x0[at]; }
        case 1u: { return x1[at]; }
        case 2u: { return x2[at]; }
        case 3u: { return x3[at]; }
        case 4u: { return x4[at]; }
        default: { return x5[at]; }
    }
}

@compute @workgroup_size(256)
fn concat(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * nwg.x + wg.x) * 256u + li;
    if (i >= params.n) {
        return;
    }
    let row = params.total * params.inner;
    let o = i / row;
    var r = i % row;
    var t = 0u;
    for (; t + 1u < params.count; t = t + 1u) {
        let chunk = params.lens[t / 4u][t % 4u] * params.inner;
        if (r < chunk) {
            break;
        }
        r = r - chunk;
    }
    let chunk = params.lens[t / 4u][t % 4u] * params.inner;
    y[i] = input_at(t, o * chunk + r);
}
