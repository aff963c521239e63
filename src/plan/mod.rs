//! Compiling a graph for execution: value slots, the order of steps, and when
//! each intermediate value dies so its memory can be freed or reused.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use crate::graph::Graph;

/// Where a step reads an input from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A parameter, by name.
    Param(String),
    /// A value slot (graph input or node output).
    Slot(usize),
}

/// One node's execution.
#[derive(Clone, Debug)]
pub struct Step {
    /// Index into `graph.nodes()`.
    pub node: usize,
    /// Where each input comes from.
    pub inputs: Vec<Source>,
    /// Slots for each output.
    pub outputs: Vec<usize>,
    /// Slots whose last reader is this step (and that are not graph outputs).
    pub free_after: Vec<usize>,
}

/// The execution plan of a graph: every non-parameter value has a slot.
#[derive(Clone, Debug)]
pub struct ExecPlan {
    /// Steps in topological order.
    pub steps: Vec<Step>,
    /// Slot of each graph input, in graph order.
    pub input_slots: Vec<usize>,
    /// Slot (or parameter) of each graph output, in graph order.
    pub output_sources: Vec<Source>,
    /// Number of slots.
    pub slot_count: usize,
    /// Slot names, for messages.
    pub slot_names: Vec<String>,
}

impl ExecPlan {
    /// Plans a validated graph.
    pub fn new(graph: &Graph) -> Self {
        let mut slot_of: HashMap<&str, usize> = HashMap::new();
        let mut slot_names: Vec<String> = Vec::new();
        let mut input_slots = Vec::new();
        for i in graph.inputs() {
            slot_of.insert(&i.name, slot_names.len());
            input_slots.push(slot_names.len());
            slot_names.push(i.name.clone());
        }
        let source = |name: &str, slot_of: &HashMap<&str, usize>| match slot_of.get(name) {
            Some(&s) => Source::Slot(s),
            None => Source::Param(name.to_string()),
        };
        let mut steps = Vec::with_capacity(graph.nodes().len());
        for (idx, n) in graph.nodes().iter().enumerate() {
            let inputs = n.inputs.iter().map(|v| source(v, &slot_of)).collect();
            let mut outputs = Vec::with_capacity(n.outputs.len());
            for o in &n.outputs {
                slot_of.insert(o, slot_names.len());
                outputs.push(slot_names.len());
                slot_names.push(o.clone());
            }
            steps.push(Step {
                node: idx,
                inputs,
                outputs,
                free_after: Vec::new(),
            });
        }
        let output_sources: Vec<Source> = graph.outputs().iter().map(|o| source(&o.name, &slot_of)).collect();
        let slot_count = slot_names.len();

        // Last reader of each slot; graph outputs live to the end.
        let mut last_use: Vec<Option<usize>> = vec![None; slot_count];
        for (si, st) in steps.iter().enumerate() {
            for s in &st.inputs {
                if let Source::Slot(s) = s {
                    last_use[*s] = Some(si);
                }
            }
        }
        for o in &output_sources {
            if let Source::Slot(s) = o {
                last_use[*s] = None;
            }
        }
        for (s, lu) in last_use.iter().enumerate() {
            if let Some(si) = lu {
                steps[*si].free_after.push(s);
            }
        }
        Self {
            steps,
            input_slots,
            output_sources,
            slot_count,
            slot_names,
        }
    }
}
