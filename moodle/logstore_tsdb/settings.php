<?php
// This file is part of Moodle - https://moodle.org/
//
// Moodle is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.
//
// Moodle is distributed in the hope that it will be useful,
// but WITHOUT ANY WARRANTY; without even the implied warranty of
// MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
// GNU General Public License for more details.
//
// You should have received a copy of the GNU General Public License
// along with Moodle.  If not, see <https://www.gnu.org/licenses/>.

/**
 * Settings of the TimescaleDB spool log store.
 *
 * @package    logstore_tsdb
 * @copyright  2025 moodle-tsdb-shipper contributors
 * @license    https://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

defined('MOODLE_INTERNAL') || die();

if ($hassiteconfig) {
    $settings->add(new admin_setting_heading('logstore_tsdb/intro', '',
        new lang_string('intro', 'logstore_tsdb')));

    $settings->add(new admin_setting_configdirectory('logstore_tsdb/spooldir',
        new lang_string('spooldir', 'logstore_tsdb'),
        new lang_string('spooldir_desc', 'logstore_tsdb'),
        '/var/spool/moodle-tsdb-shipper'));

    $settings->add(new admin_setting_configtext('logstore_tsdb/fileprefix',
        new lang_string('fileprefix', 'logstore_tsdb'),
        new lang_string('fileprefix_desc', 'logstore_tsdb'),
        'moodle-events', '/^[A-Za-z0-9][A-Za-z0-9._-]*$/'));

    $settings->add(new admin_setting_configtext('logstore_tsdb/hostname',
        new lang_string('hostname', 'logstore_tsdb'),
        new lang_string('hostname_desc', 'logstore_tsdb'),
        '', '/^[A-Za-z0-9._-]*$/'));

    $settings->add(new admin_setting_configcheckbox('logstore_tsdb/logguests',
        new lang_string('logguests', 'logstore_tsdb'),
        new lang_string('logguests_desc', 'logstore_tsdb'), 1));

    $settings->add(new admin_setting_configtextarea('logstore_tsdb/skipevents',
        new lang_string('skipevents', 'logstore_tsdb'),
        new lang_string('skipevents_desc', 'logstore_tsdb'), '', PARAM_RAW_TRIMMED));

    $settings->add(new admin_setting_configtext('logstore_tsdb/flushevery',
        new lang_string('flushevery', 'logstore_tsdb'),
        new lang_string('flushevery_desc', 'logstore_tsdb'),
        '50', '/^[1-9][0-9]{0,5}$/'));
}
