//! Every WGSL kernel, parsed and validated by naga and written out as SPIR-V,
//! MSL, HLSL and GLSL — so a shader that would break on Metal, DX12 or GL
//! fails here, on a machine with no such GPU. Override constants are
//! resolved first (as wgpu does before its back ends), once with their
//! defaults and once with every override set to 1.

use std::collections::BTreeSet;

use naga::back::PipelineConstants;
use naga::valid::{Capabilities, ValidationFlags, Validator};
use wginfer::backend::gpu::shaders::{self, ShaderId};

fn parse(name: &str, src: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    // Kernels that `enable f16` are only used where the device has SHADER_F16.
    let mut caps = if src.contains("enable f16;") {
        Capabilities::default() | Capabilities::SHADER_FLOAT16
    } else {
        Capabilities::default()
    };
    // Kernels with subgroup operations are only used where the device has SUBGROUP.
    if src.contains("subgroupBroadcast") {
        caps |= Capabilities::SUBGROUP;
    }
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    (module, info)
}

fn write_all(
    name: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    stage: naga::ShaderStage,
    entry: &str,
    f16: bool,
) {
    let spv = naga::back::spv::write_vec(module, info, &naga::back::spv::Options::default(), None)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));
    assert!(!spv.is_empty());

    let (msl, _) = naga::back::msl::write_string(
        module,
        info,
        &naga::back::msl::Options::default(),
        &naga::back::msl::PipelineOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: MSL: {e}"));
    assert!(msl.contains("kernel"), "{name}: MSL has no kernel");

    let mut hlsl = String::new();
    // f16 needs shader model 6.2 on DX12.
    let hlsl_opts = naga::back::hlsl::Options {
        shader_model: if f16 {
            naga::back::hlsl::ShaderModel::V6_2
        } else {
            naga::back::hlsl::Options::default().shader_model
        },
        ..Default::default()
    };
    let hlsl_pipe = naga::back::hlsl::PipelineOptions::default();
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_opts, &hlsl_pipe)
        .write(module, info, None)
        .unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));
    assert!(hlsl.contains("numthreads"), "{name}: HLSL has no compute entry");

    if f16 {
        // wgpu's GL backend never offers SHADER_F16, so an f16 kernel is never compiled to GLSL.
        return;
    }

    let mut glsl = String::new();
    let glsl_opts = naga::back::glsl::Options {
        version: naga::back::glsl::Version::Embedded {
            version: 310,
            is_webgl: false,
        },
        ..Default::default()
    };
    let glsl_pipe = naga::back::glsl::PipelineOptions {
        shader_stage: stage,
        entry_point: entry.to_string(),
        multiview: None,
    };
    naga::back::glsl::Writer::new(
        &mut glsl,
        module,
        info,
        &glsl_opts,
        &glsl_pipe,
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut w| w.write())
    .unwrap_or_else(|e| panic!("{name}: GLSL: {e}"));
    assert!(glsl.contains("local_size_x"), "{name}: GLSL has no compute layout");
}

#[test]
fn every_kernel_validates_and_translates_to_every_backend() {
    let mut checked = 0;
    let kernels = shaders::ALL
        .iter()
        .map(|&id| (id.file(), shaders::source(id), id.needs_f16()));
    let decoder = wginfer::generate::gpu::SHADERS
        .iter()
        .map(|&(file, src)| (file, src, false));
    for (file, src, f16) in kernels.chain(decoder) {
        let (module, info) = parse(file, src);
        assert!(!module.entry_points.is_empty(), "{file} has no entry point");
        let overrides: Vec<String> = module.overrides.iter().filter_map(|(_, o)| o.name.clone()).collect();
        let mut all_one = PipelineConstants::default();
        for o in &overrides {
            all_one.insert(o.clone(), 1.0);
        }
        for ep in &module.entry_points {
            for (label, constants) in [
                ("defaults", PipelineConstants::default()),
                ("overrides = 1", all_one.clone()),
            ] {
                let name = format!("{file}::{} ({label})", ep.name);
                let (m, i) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((ep.stage, &ep.name)),
                    &constants,
                )
                .unwrap_or_else(|e| panic!("{name}: overrides: {e}"));
                write_all(&name, &m, &i, ep.stage, &ep.name, f16);
                checked += 1;
            }
        }
    }
    eprintln!("naga: {checked} entry-point specialisations written as SPIR-V, MSL, HLSL and GLSL");
}

#[test]
fn preludes_validate_alone() {
    for p in shaders::PRELUDES {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders").join(p);
        let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // With the generated code constants, as every kernel is compiled.
        parse(p, &format!("{src}\n{}", shaders::codes()));
    }
}

#[test]
fn every_file_in_shaders_is_compiled() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("shaders/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    let known: BTreeSet<String> = shaders::ALL
        .iter()
        .map(|id: &ShaderId| id.file().to_string())
        .chain(shaders::PRELUDES.iter().map(|s| s.to_string()))
        .chain(wginfer::generate::gpu::SHADERS.iter().map(|(f, _)| f.to_string()))
        .collect();
    assert_eq!(
        on_disk, known,
        "every shaders/*.wgsl must be a kernel (shaders::ALL) or a prelude"
    );
}

/// Every Rust params struct has the size and member offsets naga gives the
/// WGSL `struct Params` of the kernel family it serves.
#[test]
fn params_structs_match_the_wgsl_layout() {
    let mut checked = 0;
    for l in shaders::params_layouts() {
        let file = l.shader.file();
        let src = shaders::source(l.shader);
        let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(src)));
        let mut layouter = naga::proc::Layouter::default();
        layouter
            .update(module.to_ctx())
            .unwrap_or_else(|e| panic!("{file}: layout: {e}"));
        let (handle, ty) = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("Params"))
            .unwrap_or_else(|| panic!("{file} has no struct Params"));
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{file}: Params is not a struct");
        };
        assert_eq!(layouter[handle].size, *span);
        let wgsl: Vec<(String, usize)> = members
            .iter()
            .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
            .collect();
        let rust: Vec<(String, usize)> = l.members.iter().map(|&(n, o)| (n.to_string(), o)).collect();
        assert_eq!(rust, wgsl, "{file}: {} members and offsets", l.rust);
        assert_eq!(l.size, *span as usize, "{file}: size of {}", l.rust);
        checked += 1;
    }
    eprintln!("naga: {checked} params structs match their WGSL layout");
}

/// `shaders/qlinear_sg.wgsl` is what `shaders/gen_qlinear_sg.py` writes.
#[test]
fn qlinear_sg_is_fresh_from_its_generator() {
    use std::io::Write;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let out = match std::process::Command::new("python3")
        .arg(dir.join("gen_qlinear_sg.py"))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            // Past the test harness's capture, so the summary shows it.
            let _ = writeln!(std::io::stderr(), "SKIPPED qlinear_sg freshness: no python3 ({e})");
            return;
        }
    };
    assert!(
        out.status.success(),
        "gen_qlinear_sg.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_disk = std::fs::read_to_string(dir.join("qlinear_sg.wgsl")).expect("shaders/qlinear_sg.wgsl");
    assert!(
        String::from_utf8_lossy(&out.stdout) == on_disk,
        "shaders/qlinear_sg.wgsl is stale: run python3 shaders/gen_qlinear_sg.py > shaders/qlinear_sg.wgsl"
    );
}
